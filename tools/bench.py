"""Benchmark a config: per-phase step times, tokens per second, and the cost of building batches.

    python tools/bench.py --config configs/demo.yaml [--steps 4] [any `urpo fit` override ...]

Prints one table: the mean seconds of each phase of a step (``urpo.timing.PHASES``: render, rollout, judge, reward and
each reward callback's share of it, advantage, update, metrics) over the measured steps
(the first step is a warm-up and is left out), completion tokens per second, and how long the DataModule takes to
build a batch of 64 rows from the same sources, as a share of a step. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L


class _PhaseRecorder(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        logged = trainer.callback_metrics
        self.steps.append(
            {k: float(v) for k, v in logged.items() if k.startswith(("time/", "throughput/", "completion/tokens"))}
        )


def _batch_build_seconds(datamodule, rows: int = 64, repeats: int = 20) -> float:
    import copy

    probe = copy.copy(datamodule)
    probe.batch_size = rows
    from urpo.data.mixture import kind_quotas

    probe.quotas = kind_quotas(probe.mixture, rows)
    probe.mixer = None
    probe.setup("fit")
    start = time.perf_counter()
    for _ in range(repeats):
        probe.mixer.next_batch()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    from urpo.cli import URPOCLI
    from urpo.data.datamodule import URPODataModule
    from urpo.module import URPOModule

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="training steps to run (the first is a warm-up)")
    known, rest = parser.parse_known_args(argv)
    overrides = [
        "--trainer.max_steps",
        str(known.steps),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--model.logging.export_dir",
        "null",
        "--model.logging.samples_every_n_steps",
        "0",
        "--trainer.callbacks",
        "null",
    ]
    cli = URPOCLI(URPOModule, URPODataModule, run=False, args=rest + overrides, save_config_callback=None)
    recorder = _PhaseRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    print(format_table(recorder.steps[1:] or recorder.steps, _batch_build_seconds(cli.datamodule), cli))


def _phase_order(key: str) -> tuple[int, str]:
    """time/step first, then the phases in the order a step runs them, a phase's details after it."""
    from urpo.timing import PHASES

    phase = key.removeprefix("time/").split("/", 1)[0]
    if phase == "step":
        return 0, key
    return (PHASES.index(phase) + 1 if phase in PHASES else len(PHASES) + 1), key


def format_table(steps: list[dict[str, float]], batch_seconds: float, cli) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, tools.* imports from the checkout
    from tools.machine import cpu_name, simd

    keys = sorted({k for s in steps for k in s if k.startswith("time/")}, key=_phase_order)
    step_time = statistics.mean(s["time/step"] for s in steps)
    lines = [
        f"machine: {cpu_name()} ({simd()}), {os.cpu_count()} cores, torch threads "
        f"{__import__('torch').get_num_threads()}; precision {cli.trainer.precision}; {len(steps)} measured steps",
        f"{'phase':<32}{'seconds':>10}{'share':>9}",
    ]
    for key in keys:
        mean = statistics.mean(s.get(key, 0.0) for s in steps)
        lines.append(f"{key:<32}{mean:>10.3f}{mean / step_time:>9.1%}")
    tokens = statistics.mean(s.get("throughput/tokens_per_s", 0.0) for s in steps)
    lines.append(f"{'completion tokens / s':<32}{tokens:>10.1f}")
    lines.append(f"{'build a 64-row batch':<32}{batch_seconds:>10.5f}{batch_seconds / step_time:>9.2%}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
