"""Do two evidence runs tell the same story? ``python -m tools.evidence.compare A B`` (folders or results.json files).

One machine repeats a seeded run to the digit. Another CPU, or a narrower float path on this one (docs/evidence.md,
"Across CPUs"), trains different models from the same seeds. Which seeds pass the warm-start gate may then change,
and so may every score. The claims' verdicts should not. This prints both machines and the seeds each kept. It shows
the scores side by side, and for every claim both verdicts and whether they agree. ``--out`` also writes it to a
file. ``--seeds`` compares over those seeds asked only (a run that asked seeds 0-4 against the documented 0-7): each
run is summarized again from its results.json over the seeds of that set that passed its gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools.evidence` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.names import CLAIMS, METRICS, RUN_LABELS, seed_of
from tools.evidence.report import cell, summarize
from tools.machine import describe


def load(path: Path) -> dict[str, Any]:
    """A run's results.json, from the file or the folder holding it."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no results.json here (a folder `python -m tools.evidence.run --out` wrote)")
    return json.loads(file.read_text())


def restrict(document: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """The run as if it had asked only ``seeds``: its meta narrowed to them and its summary computed again."""
    meta = document["meta"]
    asked = [s for s in meta.get("seeds_asked", meta["seeds"]) if s in seeds]
    failed = {name: why for name, why in meta.get("failed_gates", {}).items() if seed_of(name) in seeds}
    meta = {**meta, "seeds": [s for s in meta["seeds"] if s in seeds], "seeds_asked": asked, "failed_gates": failed}
    if not meta["seeds"]:
        raise ValueError(f"none of seeds {seeds} passed the gate in this run (it kept {document['meta']['seeds']})")
    return {**document, "meta": meta, "summary": summarize(document["runs"], meta)}


def machine(meta: dict[str, Any]) -> str:
    return (
        describe(meta["machine"]) if meta.get("machine") else "not recorded (its results.json predates tools.machine)"
    )


def verdict(entry: dict[str, Any] | None) -> str | None:
    """``mean ± std, k/n > 0, significant`` for one claim's paired test; None where the run did not record it."""
    if not entry or not entry.get("n"):
        return None
    return f"{cell(entry)}, {entry['positive']}/{entry['n']} > 0, {'significant' if entry['significant'] else 'not'}"


def claims(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Every claim both runs recorded: the two entries, whether their verdicts (mean > 0 at 5%) agree, and whether
    their means point the same way (two runs that both find no significance may still disagree in direction)."""
    rows = []
    for key, label in CLAIMS.items():
        a, b = (doc["summary"].get("comparisons", {}).get(key) for doc in (first, second))
        if verdict(a) and verdict(b):
            agree, same_sign = a["significant"] == b["significant"], (a["mean"] > 0) == (b["mean"] > 0)
            rows.append({"claim": key, "label": label, "first": a, "second": b, "agree": agree, "same_sign": same_sign})
    return rows


def markdown(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str]) -> str:
    """The comparison as Markdown: machines and seeds, scores side by side, then the claims' verdicts."""
    lines = [f"# {names[0]} against {names[1]}", ""]
    for name, doc in zip(names, (first, second), strict=True):
        meta = doc["meta"]
        dropped = ", ".join(sorted(meta.get("failed_gates", {}))) or "none"
        asked = meta.get("seeds_asked", meta["seeds"])
        lines.append(
            f"- **{name}**: {machine(meta)}. Seeds asked: {asked}; kept: {meta['seeds']}; warm starts that missed "
            f"the gate: {dropped}."
        )
    lines += ["", f"| Run | Score | {names[0]} | {names[1]} |", "|---|---|---|---|"]
    for run, label in RUN_LABELS.items():
        for metric, metric_label in METRICS.items():
            a, b = (doc["summary"].get(run, {}).get(metric) for doc in (first, second))
            lines.append(f"| {label} | {metric_label} | {cell(a)} | {cell(b)} |")
    rows = claims(first, second)
    head = f"| Claim (mean > 0 at 5%?) | {names[0]} | {names[1]} | Same verdict | Same sign |"
    lines += ["", head, "|---|---|---|---|---|"]
    yes_no = lambda flag: "yes" if flag else "**no**"  # noqa: E731
    for row in rows:
        cells = [row["label"], verdict(row["first"]), verdict(row["second"]), yes_no(row["agree"])]
        lines.append("| " + " | ".join([*cells, yes_no(row["same_sign"])]) + " |")
    agreeing, same_sign = sum(row["agree"] for row in rows), sum(row["same_sign"] for row in rows)
    lines += [
        "",
        f"The verdicts agree on {agreeing} of {len(rows)} claims; the means point the same way on {same_sign}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="a results.json or its folder (e.g. docs/evidence)")
    parser.add_argument("second", type=Path, help="the run to compare it with")
    parser.add_argument("--names", nargs=2, default=None, help="what to call the two runs (default: their paths)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="compare over these seeds asked only")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    names = tuple(args.names or (str(args.first), str(args.second)))
    first, second = load(args.first), load(args.second)
    if args.seeds is not None:
        first, second = restrict(first, args.seeds), restrict(second, args.seeds)
    text = markdown(first, second, names)
    if args.out:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
