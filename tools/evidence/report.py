"""Turns the runs' results into ``results.json``, a Markdown table (``results.md``) and PNG plots."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_LABELS = {
    "warm_start": "Warm start, no RL",
    "urpo": "URPO (self-judge)",
    "separate_referee": "Separate frozen referee (paper's baseline)",
    "verifiable_only": "GRPO, verifiable rows only",
}
METRICS = {
    "open_accuracy": "Open-style accuracy",
    "verifiable_accuracy": "Verifiable accuracy",
    "referee_accuracy": "Judging accuracy (trained model)",
}
JUDGE_NAMES = {"urpo": "probed_self_judge", "separate_referee": "frozen_judge"}
COLORS = {"warm_start": "#888888", "urpo": "#1f77b4", "separate_referee": "#d62728", "verifiable_only": "#2ca02c", "referee": "#ff7f0e"}


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; 0 for one value) and the values themselves."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def final_scores(results: dict[str, dict], run: str, seed: int, warm_seed: int) -> dict[str, float]:
    """The held-out scores a run ended with (the warm start's are its own, evaluated once)."""
    if run == "warm_start":
        return results[f"warm_start/{warm_seed}"]["scores"]
    return results[f"{run}/{seed}"]["final"]


def truth_agreement(results: dict[str, dict], run: str, seed: int) -> float | None:
    """Mean over training steps of how often the open-row rewards ordered answers as the truth does."""
    key = f"reward/{JUDGE_NAMES[run]}/truth_agreement"
    values = [s[key] for s in results[f"{run}/{seed}"]["steps"] if key in s and not math.isnan(s[key])]
    return statistics.fmean(values) if values else None


def summarize(results: dict[str, dict], meta: dict[str, Any]) -> dict[str, Any]:
    """Per run and metric: mean, std and per-seed values; plus the open-row referees and run times."""
    seeds = meta["seeds"]
    warm_of = {s: (s if meta["warm_per_seed"] else seeds[0]) for s in seeds}
    summary: dict[str, Any] = {}
    for run in RUN_LABELS:
        per_seed = [final_scores(results, run, s, warm_of[s]) for s in seeds]
        summary[run] = {m: stats([p[m] for p in per_seed]) for m in METRICS}
        names = [f"warm_start/{warm_of[s]}" if run == "warm_start" else f"{run}/{s}" for s in seeds]
        summary[run]["seconds"] = stats([results[n]["seconds"] for n in names])
    # The referee whose rankings rewarded the open rows: URPO's is the trained model itself, the baseline's the frozen one.
    summary["urpo"]["open_referee_accuracy"] = summary["urpo"]["referee_accuracy"]
    summary["separate_referee"]["open_referee_accuracy"] = stats([results[f"referee/{s}"]["final"]["referee_accuracy"] for s in seeds])
    summary["referee"] = {"seconds": stats([results[f"referee/{s}"]["seconds"] for s in seeds])}
    for run in JUDGE_NAMES:
        summary[run]["reward_truth_agreement"] = stats([truth_agreement(results, run, s) for s in seeds])
    return summary


def _cell(entry: dict[str, Any] | None, percent: bool = True) -> str:
    if not entry or entry["mean"] is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    return f"{entry['mean'] * scale:.1f} ± {entry['std'] * scale:.1f}"


def markdown_table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The results table: mean ± std over seeds, in percent."""
    head = ["Run", *METRICS.values(), "Referee that rewarded open rows", "Reward-truth agreement (open, training)", "Seconds per run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, label in RUN_LABELS.items():
        row = summary[run]
        cells = [label, *(_cell(row[m]) for m in METRICS), _cell(row.get("open_referee_accuracy")),
                 _cell(row.get("reward_truth_agreement")), _cell(row["seconds"], percent=False)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    n = len(meta["seeds"])
    notes = [
        "",
        f"Mean ± sample std over {n} seeds ({', '.join(map(str, meta['seeds']))}), in percent; held-out sets of "
        f"{meta['world']['heldout']} problems per operation and {2 * meta['world']['heldout']} preference rows.",
        f"Every RL run: {meta['rl']['steps']} steps x {meta['rl']['prompts_per_step']} prompts x G = "
        f"{meta['rl']['num_generations']}. The separate referee was trained for the same {meta['rl']['steps']} steps on "
        "as many preference rows per step as URPO sees, then frozen"
        f" (its own run took {_cell(summary['referee']['seconds'], percent=False)} s more).",
        "The warm start is " + ("trained once per seed." if meta["warm_per_seed"] else
                                "shared by all seeds (its greedy scores do not vary: std 0)."),
        f"Whole command: {meta['wall_seconds']:.0f} s wall with {meta['workers']} worker process(es).",
    ]  # fmt: skip
    return "\n".join(lines + notes) + "\n"


def write_report(results: dict[str, dict], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes results.json, results.md and the plots into ``out``; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, meta)
    document = {"meta": meta, "summary": summary, "runs": results}
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown_table(summary, meta))
    from tools.evidence.plots import plot_all

    plot_all(results, summary, meta, out)
    return document
