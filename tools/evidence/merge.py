"""One table from two runs of the same world: ``python -m tools.evidence.merge BASE ADDED --out DIR``.

Every run is seeded and single-threaded, so a seed's runs give the same numbers whichever command ran them, on the
same float path (seeds 0-4 reproduced to the digit across runs: docs/evidence.md). A finished run can then take more
seeds, or another draw for the seeds whose warm start missed its gate, without running its other seeds again:
run only those (``python -m tools.evidence.run --seeds 1 5 --work SAME_WORK``), then merge the two results.json.

The merge refuses what would not be one run: another world, RL or warm-start recipe (the number of draws aside),
another float path, a seed kept by both, or a seed that missed its gate in BASE with fewer draws than ADDED allows
and that ADDED did not run again. The table names both commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools.evidence` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.compare import load
from tools.evidence.names import seed_of
from tools.evidence.report import write_report

SAME_SETTINGS = ("world_name", "world", "rl", "warm_per_seed")
"""Meta fields two runs must share to be one run."""

FLOAT_PATH = ("cpu", "simd", "torch", "aten_kernels", "overrides")
"""What of a recorded machine decides the bits (its core count does not: every run is single-threaded)."""


class MergeError(ValueError):
    """The two runs are not parts of one run."""


def recipe(warm: dict[str, Any]) -> dict[str, Any]:
    """A warm start's settings without its number of draws (a draw that passed is the same model either way)."""
    return {k: v for k, v in warm.items() if k != "draws"}


def check_parts(base: dict[str, Any], added: dict[str, Any]) -> None:
    """Raises :class:`MergeError` naming the first thing that keeps BASE and ADDED from being one run."""
    for field in SAME_SETTINGS:
        if base.get(field) != added.get(field):
            raise MergeError(f"meta.{field} differs: {base.get(field)!r} in BASE, {added.get(field)!r} in ADDED")
    if not base["warm_per_seed"]:
        raise MergeError("meta.warm_per_seed is false: every seed shares the first seed's warm start, nothing to add")
    if recipe(base["warm_start"]) != recipe(added["warm_start"]):
        raise MergeError("meta.warm_start differs (other than draws): the warm starts follow other recipes")
    if base.get("machine") and added.get("machine"):
        paths = [{k: m["machine"].get(k) for k in FLOAT_PATH} for m in (base, added)]
        if paths[0] != paths[1]:
            raise MergeError(f"meta.machine: another float path ({paths[0]} in BASE, {paths[1]} in ADDED)")
    if both := sorted(set(base["seeds"]) & set(added["seeds"])):
        raise MergeError(f"seeds {both} are in both tables: keep one of them")
    draws = (base["warm_start"].get("draws", 1), added["warm_start"].get("draws", 1))
    missed = sorted(seed_of(n) for n in base.get("failed_gates", {}))
    if draws[0] < draws[1] and (stale := [s for s in missed if s not in added["seeds_asked"]]):
        raise MergeError(
            f"seeds {stale} missed the gate in BASE with {draws[0]} draw(s); ADDED allows {draws[1]}: run them again"
        )


def merge(base: dict[str, Any], added: dict[str, Any]) -> tuple[dict[str, dict], dict[str, Any]]:
    """The runs and meta of BASE and ADDED (two results.json documents) as one run's; ADDED's seeds replace BASE's."""
    check_parts(base["meta"], added["meta"])
    mine = set(added["meta"]["seeds_asked"])
    runs = {n: r for n, r in base["runs"].items() if seed_of(n) not in mine} | added["runs"]
    failed = {n: e for n, e in base["meta"].get("failed_gates", {}).items() if seed_of(n) not in mine}
    failed |= added["meta"].get("failed_gates", {})
    parts = [document["meta"] for document in (base, added)]
    meta = {
        **added["meta"],
        "seeds": sorted(set(base["meta"]["seeds"]) | set(added["meta"]["seeds"])),
        "seeds_asked": sorted(set(base["meta"]["seeds_asked"]) | mine),
        "failed_gates": failed,
        "machine": added["meta"].get("machine") or base["meta"].get("machine"),
        "wall_seconds": sum(m["wall_seconds"] for m in parts),
        "command": " ; ".join(m["command"] for m in parts),
        "parts": [{k: m.get(k) for k in ("command", "seeds_asked", "seeds", "wall_seconds", "machine")} for m in parts],
    }
    meta["note"] = note(meta)
    return runs, meta


def note(meta: dict[str, Any]) -> str:
    """The table's note: the commands it came from, and the seeds whose warm start missed its gate."""
    parts = "; ".join(
        f"`{p['command']}` (seeds {p['seeds_asked']}, {p['wall_seconds']:.0f} s"
        + ("" if p.get("machine") else ", machine not recorded")
        + ")"
        for p in meta["parts"]
    )
    lines = [f"Merged by tools.evidence.merge from {parts}."]
    if meta["failed_gates"]:
        lines.append(
            f"Seeds asked: {meta['seeds_asked']}; the warm start of {', '.join(sorted(meta['failed_gates']))} missed "
            "its gate (results.json: meta.failed_gates), so the table covers the others."
        )
    return " ".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the finished run (a folder holding results.json, or the file)")
    parser.add_argument("added", type=Path, help="the run of the seeds to add or replace")
    parser.add_argument("--out", type=Path, required=True, help="where the merged results and plots go")
    args = parser.parse_args(argv)
    runs, meta = merge(load(args.base), load(args.added))
    document = write_report(runs, meta, args.out)
    print((args.out / "results.md").read_text())
    return document


if __name__ == "__main__":
    main()
