"""URPO's claims in miniature, on a CPU: ``python -m tools.evidence.run`` (or ``python tools/evidence/run.py``).

Builds the arithmetic world (:mod:`tools.evidence.world`); for every seed, a warm start of that seed
(:mod:`tools.evidence.warm_start`, gated: it must reach its solving and judging targets before RL starts), then
URPO, the separate frozen referee and the policy it rewards (the paper's baseline), and verifiable-only GRPO, all
from that warm start on the same budget and with the same seed; scores every run on the held-out sets and writes
``results.json``, ``results.md`` and plots to ``docs/evidence/`` (see :mod:`tools.evidence.report`).

Runs go to ``--workers`` processes of one thread each (2 fit a 2-core machine); whatever the order they finish in,
the numbers are the same, since every run is seeded and single-threaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools.evidence` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.runs import RLConfig, execute
from tools.evidence.warm_start import WarmStartConfig
from tools.evidence.world import WorldConfig, write_world

RUNS = ("warm_start", "urpo", "separate_referee", "verifiable_only")
"""The rows of the table; the baseline's referee is trained as a run of its own, ``referee``."""


def plan(
    seeds: list[int],
    work: Path,
    files: dict[str, str],
    rl: RLConfig,
    warm: WarmStartConfig,
    warm_per_seed: bool,
    workers: int = 1,
) -> dict[str, dict[str, Any]]:
    """Every task with its dependencies, longest chains first (warm start -> referee -> baseline)."""
    tasks: dict[str, dict[str, Any]] = {}
    common = {"files": files, "rl": asdict(rl)}
    for seed in seeds:
        warm_seed = seed if warm_per_seed else seeds[0]
        warm_name, warm_dir = f"warm_start/{warm_seed}", str(work / f"warm_start_{warm_seed}")
        threads = 1 if warm_per_seed else workers
        tasks.setdefault(
            warm_name,
            {
                "kind": "warm",
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


def schedule(tasks: dict[str, dict[str, Any]], workers: int, log=print) -> dict[str, dict[str, Any]]:
    """Runs the tasks as their dependencies finish, ``workers`` at a time (1: in this process)."""
    pending, done, start = dict(tasks), {}, time.time()

    def ready() -> list[str]:
        return [name for name, t in pending.items() if all(d in done for d in t["deps"])]

    def finish(name: str, result: dict[str, Any]) -> None:
        done[name] = result
        log(f"[{time.time() - start:6.0f}s] {name}: {result['seconds']:.0f}s {_brief(result)}")

    if workers <= 1:
        while pending:
            name = ready()[0]
            finish(name, execute(pending.pop(name)))
        return done
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        running: dict[Any, str] = {}
        while pending or running:
            for name in ready():
                running[pool.submit(execute, pending.pop(name))] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), future.result())
    return done


def _brief(result: dict[str, Any]) -> str:
    scores = result.get("scores") or result.get("final") or {}
    return " ".join(f"{k.removesuffix('_accuracy')}={v:.3f}" for k, v in scores.items() if k.endswith("accuracy"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="URPO's claims in miniature, on a CPU (docs/evidence.md).")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="seeds (default: 0 1 2 3 4); seed s trains warm start s, then every RL run with seed s",
    )
    parser.add_argument("--steps", type=int, default=RLConfig.steps, help="RL steps of every run")
    parser.add_argument("--warm-steps", type=int, default=WarmStartConfig.steps, help="supervised warm-start steps")
    parser.add_argument(
        "--warm-verdicts",
        choices=["taught", "random"],
        default=WarmStartConfig.verdicts,
        help="what the warm start's judging examples conclude: the right ranking (default) or a coin flip, leaving "
        "the verdict to RL (docs/evidence.md)",
    )
    parser.add_argument(
        "--shared-warm-start",
        dest="warm_per_seed",
        action="store_false",
        help="one warm start (the first seed's) for every seed, instead of one per seed",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=Path("docs/evidence"), help="where results and plots go")
    parser.add_argument("--work", type=Path, default=Path("build/evidence"), help="models and data files")
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration that only checks the pipeline")
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> tuple[WorldConfig, WarmStartConfig, RLConfig]:
    world, rl = WorldConfig(), RLConfig(steps=args.steps)
    warm = WarmStartConfig(steps=args.warm_steps, verdicts=args.warm_verdicts)
    if args.smoke:
        # The gate is off: a 4-step warm start cannot reach any target (the tests check the gate on its own).
        warm = replace(
            warm, steps=min(args.warm_steps, 4), batch_size=8, target_solve=0.0, target_judge=0.0, target_verdicts=0.0
        )
        rl = replace(rl, steps=min(args.steps, 2), eval_every=1, eval_limit=4, judgments_per_group=2)
    return world, warm, rl


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tools.evidence.report import write_report

    args = parse_args(argv)
    world, warm, rl = configs(args)
    start = time.time()
    files = {k: str(v) for k, v in write_world(args.work / "world", world).items()}
    tasks = plan(args.seeds, args.work, files, rl, warm, args.warm_per_seed, args.workers)
    results = schedule(tasks, args.workers)
    meta = {
        "seeds": args.seeds,
        "world": asdict(world),
        "warm_start": asdict(warm),
        "rl": asdict(rl),
        "warm_per_seed": args.warm_per_seed,
        "workers": args.workers,
        "wall_seconds": time.time() - start,
        "command": "python -m tools.evidence.run " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report = write_report(results, meta, args.out)
    print(f"done in {meta['wall_seconds']:.0f}s; table: {args.out / 'results.md'}")
    print((args.out / "results.md").read_text())
    return report


if __name__ == "__main__":
    main()
