"""Peak memory of one URPO model (player and referee) against a policy plus a separate referee copy.

    python tools/bench_memory.py                 # ~100M-parameter Qwen2, 3 steps of all three kinds
    python tools/bench_memory.py --size tiny     # seconds, to check the tool

Both runs train the same model on the same three-kind batches (verifiable, preference and open rows; G completions
each) with the HF engine. In ``unified`` the open rows are judged by the policy itself (``SelfJudge``), as URPO does;
in ``separate`` by a second, frozen copy of the model (``FrozenJudge``, the paper's baseline setting: same prompts,
shuffles, parser and aggregation, other weights). Each run is a process of its own, so its peak RSS is its own.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "MEMORY "


def run_one(spec: dict) -> None:
    """One training run (in a worker process); prints its peak RSS and median step time."""
    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch

    from tools.bench_trl import answer_reward_callback, bench_rows
    from tools.evidence.judges import FrozenJudge
    from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, SamplingArgs
    from urpo.module import URPOModule
    from urpo.rewards.preference import PreferenceReward
    from urpo.rewards.self_judge import SelfJudge

    class StepTimes(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self.t0)

    judge = SelfJudge() if spec["mode"] == "unified" else FrozenJudge(spec["model"])
    L.seed_everything(0)
    module = URPOModule(
        PolicyArgs(spec["model"]),
        rewards=[answer_reward_callback(), PreferenceReward(), judge],
        grpo=GRPOArgs(num_generations=spec["g"]),
        sampling=SamplingArgs(max_new_tokens=spec["length"]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )
    rows = bench_rows(4 * spec["steps"], three_kinds=True)  # every 4 rows: 2 verifiable, 1 preference, 1 open
    loader = torch.utils.data.DataLoader(
        [rows[i : i + 4] for i in range(0, len(rows), 4)], batch_size=None, collate_fn=lambda b: b
    )
    times = StepTimes()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=spec["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[times],
        default_root_dir=spec["workdir"],
    )
    trainer.fit(module, train_dataloaders=loader)
    seconds = sorted(times.seconds[1:] or times.seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    print(TAG + json.dumps({"peak_rss_gb": peak, "median_step_s": seconds[len(seconds) // 2]}), flush=True)


def measure(spec: dict) -> dict:
    """Runs one configuration in a fresh process and returns what it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # failures reported below
    lines = [line for line in out.stdout.splitlines() if line.startswith(TAG)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['mode']} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(TAG) :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", help="model size of tools/bench_trl.py: tiny, small, 100m")
    parser.add_argument("--g", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--length", type=int, default=32, help="new tokens per completion")
    parser.add_argument("--steps", type=int, default=3, help="training steps (4 rows each, all three kinds)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_one(json.loads(args.worker))
    sys.path.insert(0, str(ROOT))
    from tools.bench_trl import build_model, machine

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        params = build_model(Path(work) / "model", args.size)
        base = {
            "model": str(Path(work) / "model"),
            "g": args.g,
            "length": args.length,
            "steps": args.steps,
            "workdir": work,
        }
        results = {mode: measure({**base, "mode": mode}) for mode in ("unified", "separate")}
    unified, separate = results["unified"], results["separate"]
    print(
        f"Machine: {machine()}. Model: Qwen2 '{args.size}', {params / 1e6:.1f}M parameters, fp32. Work per step: "
        f"2 verifiable + 1 preference + 1 open row x G={args.g} x {args.length} new tokens, {args.steps} steps.\n"
    )
    print("| referee of the open rows | peak RSS GB | median step s |\n|---|---|---|")
    print(f"| the policy itself (URPO, one model) | {unified['peak_rss_gb']:.2f} | {unified['median_step_s']:.2f} |")
    print(
        f"| a separate frozen copy (policy + referee) | {separate['peak_rss_gb']:.2f} | "
        f"{separate['median_step_s']:.2f} |"
    )
    print(
        f"\none model / two models: {unified['peak_rss_gb'] / separate['peak_rss_gb']:.2f}x peak memory; "
        f"the copy costs {separate['peak_rss_gb'] - unified['peak_rss_gb']:.2f} GB"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
