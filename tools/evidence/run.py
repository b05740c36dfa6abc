"""URPO's claims in miniature, on a CPU: ``python -m tools.evidence.run`` (or ``python tools/evidence/run.py``).

Builds the arithmetic world (:mod:`tools.evidence.world`); for every seed, a warm start of that seed
(:mod:`tools.evidence.warm_start`, gated: it must reach its solving and judging targets before RL starts, else
another draw of it is trained), then
URPO, the separate frozen referee and the policy it rewards (the paper's baseline), and verifiable-only GRPO, all
from that warm start on the same budget and with the same seed; scores every run on the held-out sets and writes
``results.json``, ``results.md`` and plots to ``docs/evidence/`` (see :mod:`tools.evidence.report`).

``--world smollm2`` does the same on a real model (:mod:`tools.evidence.smollm2`): SmolLM2-135M-Instruct as
pretrained, measured and gated in both roles before RL (:mod:`tools.evidence.pretrained`), the same four runs
from it, 3 seeds; results go to ``docs/evidence/smollm2/``.

Runs go to ``--workers`` processes of one thread each (2 fit a 2-core machine); whatever the order they finish in,
the numbers are the same, since every run is seeded and single-threaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools.evidence` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.runs import RLConfig, execute
from tools.evidence.spec import WORLDS
from tools.evidence.warm_start import WarmStartConfig, WarmStartError
from tools.evidence.world import WorldConfig, write_world
from tools.machine import float_path

RUNS = ("warm_start", "urpo", "separate_referee", "verifiable_only")
"""The rows of the table; the baseline's referee is trained as a run of its own, ``referee``."""


def plan(
    seeds: list[int],
    work: Path,
    files: dict[str, str],
    rl: RLConfig,
    warm: Any,
    warm_per_seed: bool,
    workers: int = 1,
    warm_kind: str = "warm",
) -> dict[str, dict[str, Any]]:
    """Every task with its dependencies, longest chains first (warm start -> referee -> baseline).

    ``warm_kind``: ``warm`` trains a warm start from ``warm`` (a :class:`WarmStartConfig`); ``pretrained`` saves and
    gates a pretrained model (``warm``: a :class:`~tools.evidence.pretrained.GateConfig`)."""
    tasks: dict[str, dict[str, Any]] = {}
    common = {"files": files, "rl": asdict(rl)}
    for seed in seeds:
        warm_seed = seed if warm_per_seed else seeds[0]
        warm_name, warm_dir = f"warm_start/{warm_seed}", str(work / f"warm_start_{warm_seed}")
        threads = 1 if warm_per_seed else workers
        tasks.setdefault(
            warm_name,
            {
                "kind": warm_kind,
                "seed": warm_seed,
                "out": warm_dir,
                "warm": asdict(warm),
                "threads": threads,
                "deps": [],
                **common,
            },
        )
        referee_dir = str(work / f"referee_{seed}")
        base = {"seed": seed, "warm_dir": warm_dir, "deps": [warm_name], **common}
        tasks[f"referee/{seed}"] = {"kind": "referee", "save_dir": referee_dir, **base}
        tasks[f"separate_referee/{seed}"] = {
            **base,
            "kind": "separate_referee",
            "referee_dir": referee_dir,
            "deps": [warm_name, f"referee/{seed}"],
        }
        tasks[f"urpo/{seed}"] = {"kind": "urpo", **base}
        tasks[f"verifiable_only/{seed}"] = {"kind": "verifiable_only", **base}
    return tasks


def schedule(tasks: dict[str, dict[str, Any]], workers: int, log=print) -> tuple[dict[str, Any], dict[str, str]]:
    """Runs the tasks as their dependencies finish, ``workers`` at a time (1: in this process).

    Returns the results by task and the warm starts that missed their gate (task -> error). A gate failure drops
    only the tasks that need that warm start: the other seeds go on, and the report names the seed that failed."""
    pending, done, failed, start = dict(tasks), {}, {}, time.time()

    def ready() -> list[str]:
        return [name for name, t in pending.items() if all(d in done for d in t["deps"])]

    def finish(name: str, outcome) -> None:
        try:
            result = outcome()
        except WarmStartError as error:
            failed[name] = str(error)
            dropped = [n for n, t in pending.items() if name in t["deps"]]
            for n in dropped:
                pending.pop(n)
            log(f"[{time.time() - start:6.0f}s] {name}: FAILED its gate, dropping {', '.join(dropped)}: {error}")
            return
        done[name] = result
        log(f"[{time.time() - start:6.0f}s] {name}: {result['seconds']:.0f}s {_brief(result)}")

    if workers <= 1:
        while pending:
            name = ready()[0]
            task = pending.pop(name)
            finish(name, partial(execute, task))
        return done, failed
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        running: dict[Any, str] = {}
        while pending or running:
            for name in ready():
                running[pool.submit(execute, pending.pop(name))] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), future.result)
    return done, failed


def surviving_seeds(seeds: list[int], tasks: dict[str, dict[str, Any]], failed: dict[str, str]) -> list[int]:
    """The seeds whose warm start passed its gate; raises when none did (nothing to report)."""
    kept = [s for s in seeds if all(d not in failed for d in tasks[f"urpo/{s}"]["deps"])]
    if not kept:
        raise WarmStartError("every warm start missed its gate: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return kept


def _brief(result: dict[str, Any]) -> str:
    scores = result.get("scores") or result.get("final") or {}
    return " ".join(f"{k.removesuffix('_accuracy')}={v:.3f}" for k, v in scores.items() if k.endswith("accuracy"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="URPO's claims in miniature, on a CPU (docs/evidence.md).")
    parser.add_argument(
        "--world",
        choices=WORLDS,
        default="arithmetic",
        help="arithmetic: a tiny model warm-started from scratch (default); smollm2: SmolLM2-135M-Instruct, pretrained",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds (default: 0-7; smollm2: 0 1 2); seed s trains warm start s, then every RL run with seed s",
    )
    parser.add_argument("--steps", type=int, default=None, help="RL steps of every run (default: the world's)")
    parser.add_argument("--warm-steps", type=int, default=WarmStartConfig.steps, help="supervised warm-start steps")
    parser.add_argument(
        "--warm-verdict-noise",
        type=float,
        default=WarmStartConfig.verdict_noise,
        help="share of the warm start's judging examples whose verdict is a coin flip: 0 taught, 1 random "
        "(a judge at chance that RL must teach its verdict), in between an unsure judge (docs/evidence.md)",
    )
    parser.add_argument(
        "--warm-draws",
        type=int,
        default=WarmStartConfig.draws,
        help="warm starts drawn per seed until one passes its gate (default: 2); if all miss, the seed is dropped",
    )
    parser.add_argument(
        "--shared-warm-start",
        dest="warm_per_seed",
        action="store_false",
        help="one warm start (the first seed's) for every seed, instead of one per seed",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=None, help="where results and plots go (default: docs/evidence)")
    parser.add_argument("--work", type=Path, default=None, help="models and data files (default: build/evidence)")
    parser.add_argument(
        "--model",
        default=None,
        help="smollm2 world: the starting model (default: SmolLM2-135M-Instruct from PyPI; the tests pass a tiny one)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration that only checks the pipeline")
    args = parser.parse_args(argv)
    real = args.world == "smollm2"
    args.seeds = args.seeds or ([0, 1, 2] if real else list(range(8)))
    args.out = args.out or Path("docs/evidence/smollm2" if real else "docs/evidence")
    args.work = args.work or Path("build/evidence/smollm2" if real else "build/evidence")
    if args.model and not real:
        parser.error("--model is for --world smollm2 (the arithmetic world trains its own model)")
    return args


def configs(args: argparse.Namespace) -> tuple[WorldConfig, WarmStartConfig, RLConfig]:
    steps = {} if args.steps is None else {"steps": args.steps}
    world, rl = WorldConfig(), RLConfig(**steps)
    warm = WarmStartConfig(steps=args.warm_steps, verdict_noise=args.warm_verdict_noise, draws=args.warm_draws)
    if args.smoke:
        # The gate is off: a 4-step warm start cannot reach any target (the tests check the gate on its own).
        warm = replace(
            warm, steps=min(args.warm_steps, 4), batch_size=8, target_solve=0.0, target_judge=0.0, target_verdicts=0.0
        )
        rl = replace(rl, steps=min(rl.steps, 2), prompts_per_step=6, eval_every=1, eval_limit=4, judgments_per_group=2)
    return world, warm, rl


SMOLLM2_RL = RLConfig(
    world="smollm2",
    steps=5,
    prompts_per_step=6,
    lr=2e-5,
    max_new_tokens=32,
    temperature=0.7,
    judge_temperature=0.5,
    judge_max_new_tokens=8,
    judgments_per_group=2,
    eval_every=5,
    eval_at_start=False,
)
"""The smollm2 world's runs: configs/demo.yaml's GRPO settings (lr 2e-5, rollouts at T = 0.7, 2 judgments per
open group at T = 0.5 with a few tokens, as its verdict comes first), 6 rows x G = 4 per step like the toy world,
and as many steps as fit 3 seeds x 4 runs into an hour on 2 idle cores (a step takes about 80 s on
one core: docs/evidence.md); scored at the start (once, for all runs) and at the end."""


def real_configs(args: argparse.Namespace):
    """The smollm2 world's settings: (world, gate, RL); ``--smoke`` shrinks them and turns the gate off."""
    from tools.evidence.pretrained import GateConfig
    from tools.evidence.smollm2 import RealWorldConfig

    world, gate = RealWorldConfig(), GateConfig(**({"model": args.model} if args.model else {}))
    rl = SMOLLM2_RL if args.steps is None else replace(SMOLLM2_RL, steps=args.steps, eval_every=args.steps)
    if args.smoke:
        world = replace(world, heldout=4, check=4)
        gate = replace(gate, target_solve=0.0, target_judge=0.0)
        rl = replace(rl, steps=min(rl.steps, 2), eval_every=1, eval_limit=4)
    return world, gate, rl


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tools.evidence.report import write_report

    args = parse_args(argv)
    start = time.time()
    if args.world == "smollm2":
        from tools.evidence.smollm2 import write_world as write_real_world

        world, warm, rl = real_configs(args)
        files = {k: str(v) for k, v in write_real_world(args.work / "world", world).items()}
        args.warm_per_seed = False  # one pretrained model starts every seed's runs
        tasks = plan(args.seeds, args.work, files, rl, warm, False, args.workers, warm_kind="pretrained")
    else:
        world, warm, rl = configs(args)
        files = {k: str(v) for k, v in write_world(args.work / "world", world).items()}
        tasks = plan(args.seeds, args.work, files, rl, warm, args.warm_per_seed, args.workers)
    results, failed = schedule(tasks, args.workers)
    meta = {
        "seeds": surviving_seeds(args.seeds, tasks, failed),
        "seeds_asked": args.seeds,
        "failed_gates": failed,
        "world": asdict(world),
        "world_name": args.world,
        "warm_start": asdict(warm),
        "rl": asdict(rl),
        "warm_per_seed": args.warm_per_seed,
        "workers": args.workers,
        "machine": float_path(),
        "wall_seconds": time.time() - start,
        "command": "python -m tools.evidence.run " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.world == "smollm2":
        from tools.evidence.pretrained import gate_note

        meta["note"] = gate_note(results[f"warm_start/{args.seeds[0]}"])
    if failed:
        meta["note"] = " ".join(
            [
                meta.get("note", ""),
                f"Seeds asked: {args.seeds}; the warm start of {', '.join(sorted(failed))} missed its "
                "gate (results.json: meta.failed_gates), so the table covers the others.",
            ]
        ).strip()
    report = write_report(results, meta, args.out)
    print(f"done in {meta['wall_seconds']:.0f}s; table: {args.out / 'results.md'}")
    print((args.out / "results.md").read_text())
    return report


if __name__ == "__main__":
    main()
