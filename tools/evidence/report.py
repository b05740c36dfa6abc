"""Turns the runs' results into ``results.json``, a Markdown table (``results.md``) and PNG plots."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.evidence.names import CLAIMS, JUDGE_NAMES, JUDGING_METRICS, METRICS, RUN_LABELS, VERDICT_METRICS
from tools.evidence.plots import plot_all
from tools.machine import describe


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
    """How often the open-row rewards ordered answers as the truth does: the mean of its 10-step block means (each
    over the steps that measured it), which is what results.json keeps, so a redraw gives the run's own figure."""
    key = f"reward/{JUDGE_NAMES[run]}/truth_agreement"
    return stats(results[f"{run}/{seed}"]["blocks"].get(key, []))["mean"]  # blocks that never measured it left out


def summarize(results: dict[str, dict], meta: dict[str, Any]) -> dict[str, Any]:
    """Per run and metric: mean, std and per-seed values; plus the open-row referees and run times."""
    seeds = meta["seeds"]
    warm_of = {s: (s if meta["warm_per_seed"] else seeds[0]) for s in seeds}
    summary: dict[str, Any] = {}
    for run in RUN_LABELS:
        per_seed = [final_scores(results, run, s, warm_of[s]) for s in seeds]
        summary[run] = {m: stats([p.get(m) for p in per_seed]) for m in {**METRICS, **VERDICT_METRICS}}
        names = [f"warm_start/{warm_of[s]}" if run == "warm_start" else f"{run}/{s}" for s in seeds]
        reused = sorted({n for n in names if results[n].get("reused")})  # trained by an earlier run: not timed here
        timed = [n for n in names if n not in reused]
        summary[run]["seconds"] = stats([results[n]["seconds"] for n in timed])
        summary[run]["cpu_seconds"] = stats([results[n].get("cpu_seconds") for n in timed])
        summary[run]["reused"] = reused
    # The referee whose rankings rewarded the open rows: URPO's is the trained model itself, the baseline's is frozen.
    summary["urpo"]["open_referee_accuracy"] = summary["urpo"]["referee_accuracy"]
    summary["separate_referee"]["open_referee_accuracy"] = stats(
        [results[f"referee/{s}"]["final"]["referee_accuracy"] for s in seeds]
    )
    referees = [results[f"referee/{s}"] for s in seeds]
    summary["referee"] = {
        "seconds": stats([r["seconds"] for r in referees]),
        "cpu_seconds": stats([r.get("cpu_seconds") for r in referees]),
    }
    for run in JUDGE_NAMES:
        summary[run]["reward_truth_agreement"] = stats([truth_agreement(results, run, s) for s in seeds])
    summary["comparisons"] = comparisons(results, seeds, warm_of)
    summary["judging_curves"] = {m: judging_curves(results, seeds, m) for m in JUDGING_METRICS}
    warm_starts = [f"warm_start/{warm_of[s]}" for s in seeds]
    summary["warm_start"]["train_steps"] = stats([results[n].get("train_steps") for n in warm_starts])
    summary["warm_start"]["redrawn"] = {n: results[n]["draw"] for n in warm_starts if results[n].get("draw")}
    return summary


NO_SPREAD = 1e-9
"""A sample std this small (relative to the mean's size) is rounding, not spread: two seeds whose differences agree
to the last bits gave t = 1.9e14 before this was checked."""

# One-sided 5% critical values of Student's t for 1..9 degrees of freedom (any statistics table), so the tool
# needs no SciPy; with 10 or more seeds the normal approximation's 1.645 is within 0.2 of the exact value.
T_CRITICAL_5PCT_ONE_SIDED = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833)


def paired_test(differences: Sequence[float]) -> dict[str, Any]:
    """Mean ± std of per-seed differences, how many are > 0, and a one-sided paired t-test at 5% (mean > 0)."""
    entry = stats(differences)
    n = len(entry["values"])
    entry["positive"] = sum(v > 0 for v in entry["values"])
    entry["n"] = n
    if n < 2:
        entry["t"], entry["significant"] = None, False
        return entry
    if entry["std"] <= NO_SPREAD * max(1.0, abs(entry["mean"])):
        # Every seed gave the same difference (up to rounding): t is undefined. A one-sided sign test stands in:
        # n seeds all above 0 happen by chance with probability 0.5 ** n, below 5% from 5 seeds on.
        entry["t"], entry["significant"] = None, entry["positive"] == n and 0.5**n < 0.05
        return entry
    spread = entry["std"] / math.sqrt(n)
    entry["t"] = entry["mean"] / spread
    critical = T_CRITICAL_5PCT_ONE_SIDED[n - 2] if n - 1 <= len(T_CRITICAL_5PCT_ONE_SIDED) else 1.645
    entry["significant"] = entry["t"] > critical
    return entry


def comparisons(results: dict[str, dict], seeds: list[int], warm_of: dict[int, int]) -> dict[str, Any]:
    """The paper's claims as paired per-seed differences (a seed's runs share its warm start and RL seed)."""
    warm = {s: results[f"warm_start/{warm_of[s]}"]["scores"] for s in seeds}
    final = lambda run, s, m: results[f"{run}/{s}"]["final"].get(m)  # noqa: E731
    gain = lambda run, s, m: None if final(run, s, m) is None else final(run, s, m) - warm[s][m]  # noqa: E731
    out = {
        f"{run}_judging_gain": paired_test([gain(run, s, "referee_accuracy") for s in seeds])
        for run in ("urpo", "referee", "separate_referee", "verifiable_only")
    }
    for run in ("urpo", "referee", "verifiable_only"):
        out[f"{run}_sampled_judging_gain"] = paired_test([gain(run, s, "referee_sampled_accuracy") for s in seeds])
    out["urpo_minus_baseline_open"] = paired_test(
        [final("urpo", s, "open_accuracy") - final("separate_referee", s, "open_accuracy") for s in seeds]
    )
    for metric, key in (("referee_accuracy", ""), ("referee_sampled_accuracy", "_sampled")):
        out[f"urpo_minus_dedicated_referee{key}_judging"] = paired_test(
            [_difference(final("urpo", s, metric), final("referee", s, metric)) for s in seeds]
        )
    out["urpo_open_gain"] = paired_test([final("urpo", s, "open_accuracy") - warm[s]["open_accuracy"] for s in seeds])
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def cell(entry: dict[str, Any] | None, percent: bool = True) -> str:
    """``mean ± std`` of a :func:`stats` entry, in percent unless ``percent`` is off; ``n/a`` where it has no values."""
    if not entry or entry["mean"] is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    return f"{entry['mean'] * scale:.1f} ± {entry['std'] * scale:.1f}"


def markdown_table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The results table: mean ± std over seeds, in percent."""
    head = [
        "Run",
        *METRICS.values(),
        "Referee that rewarded open rows",
        "Reward-truth agreement (open, training)",
        "Seconds per run (wall; CPU)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, label in RUN_LABELS.items():
        row = summary[run]
        cells = [
            label,
            *(cell(row[m]) for m in METRICS),
            cell(row.get("open_referee_accuracy")),
            cell(row.get("reward_truth_agreement")),
            f"{cell(row['seconds'], percent=False)}; {cell(row['cpu_seconds'], percent=False)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(meta["seeds"])
    # The arithmetic world judges every held-out problem of both operations; the smollm2 world a set of its own.
    per_problem = meta.get("world_name", "arithmetic") == "arithmetic"
    preference_rows = 2 * meta["world"]["heldout"] if per_problem else meta["world"]["heldout"]
    warm = (
        "trained once per seed (seed s: warm start s, then RL seed s), so the spread covers both."
        if meta["warm_per_seed"]
        else "shared by all seeds (its greedy scores do not vary: std 0)."
    )
    notes = [
        "",
        f"Mean ± sample std over {n} seeds ({', '.join(map(str, meta['seeds']))}), in percent; held-out sets of "
        f"{meta['world']['heldout']} problems per operation and {preference_rows} preference rows.",
        f"Every RL run: {meta['rl']['steps']} steps x {meta['rl']['prompts_per_step']} prompts x G = "
        f"{meta['rl']['num_generations']}. The separate referee was trained for the same {meta['rl']['steps']} "
        "steps on as many preference rows per step as URPO sees, then frozen"
        f" (its own run took {cell(summary['referee']['seconds'], percent=False)} s more, wall;"
        f" {cell(summary['referee']['cpu_seconds'], percent=False)} s CPU).",
        f"The warm start is {warm}",
        *(
            [f"Reused from the work folder, trained by an earlier run (not in the seconds): {', '.join(reused)}."]
            if (reused := summary["warm_start"].get("reused"))
            else []
        ),
        *(
            [
                "Warm starts from a later draw of the same recipe (the earlier draws missed their gate): "
                + ", ".join(f"{name} (draw {draw})" for name, draw in redrawn.items())
                + "."
            ]
            if (redrawn := summary["warm_start"].get("redrawn"))
            else []
        ),
        f"Whole command: {meta['wall_seconds']:.0f} s wall with {meta['workers']} worker process(es). Every run is"
        " single-threaded, so its CPU seconds are close to what it takes on an idle core.",
        *([f"Machine: {describe(meta['machine'])}."] if meta.get("machine") else []),
        *([meta["note"]] if meta.get("note") else []),
    ]
    tables = verdicts_table(summary) + judging_tables(summary.get("judging_curves", {})) + claims_table(summary)
    return "\n".join(lines + notes + tables) + "\n"


def verdicts_table(summary: dict[str, Any]) -> list[str]:
    """How each run's greedy held-out judgments end (:data:`VERDICT_METRICS`), mean ± std over seeds, in percent."""
    if not any(summary[run].get(m, {}).get("values") for run in RUN_LABELS for m in VERDICT_METRICS):
        return []  # a results.json from before these were recorded
    head = ["Run", *VERDICT_METRICS.values()]
    lines = [
        "",
        "How the held-out judgments end (greedy; mean ± std, %): a judging gain is a verdict that parses, a right",
        "verdict among those, or only a fixed position (first-shown-top near 0 or 100: the order decides).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for run, label in RUN_LABELS.items():
        lines.append("| " + " | ".join([label, *(cell(summary[run].get(m)) for m in VERDICT_METRICS)]) + " |")
    return lines


def judging_curves(
    results: dict[str, dict], seeds: list[int], metric: str = "referee_accuracy"
) -> dict[str, list[dict[str, Any]]]:
    """Held-out judging accuracy (``metric``) at every evaluation, mean ± std over seeds, per trained run."""
    curves = {}
    for run in ("urpo", "referee", "separate_referee", "verifiable_only"):
        histories = [results[f"{run}/{s}"]["history"] for s in seeds]
        points = min(len(h) for h in histories)
        curves[run] = [
            {"step": histories[0][i]["step"], **stats([h[i].get(metric) for h in histories])} for i in range(points)
        ]
    return curves


JUDGING_LABELS = {
    "urpo": "URPO (one model, all kinds)",
    "referee": "Dedicated referee (preference rows only)",
    "separate_referee": "Baseline's policy (judged by the frozen referee)",
    "verifiable_only": "GRPO, verifiable rows only",
}


def judging_tables(curves_by_metric: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """One table of held-out judging accuracy during training per way of judging (sampled, greedy)."""
    if curves_by_metric and "urpo" in curves_by_metric:  # a results.json written before both were recorded
        curves_by_metric = {"referee_accuracy": curves_by_metric}
    lines = []
    for metric, curves in curves_by_metric.items():
        if any(p["mean"] is not None for p in curves["urpo"]):
            lines += judging_table(curves, JUDGING_METRICS[metric])
    return lines


def judging_table(curves: dict[str, list[dict[str, Any]]], how: str) -> list[str]:
    """Held-out judging accuracy during training (mean ± std over seeds, percent)."""
    steps = [p["step"] for p in curves["urpo"]]
    lines = [
        "",
        f"Held-out judging accuracy during training ({how}; both presentation orders; mean ± std, %):",
        "",
        "| Run | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for run, points in curves.items():
        lines.append(f"| {JUDGING_LABELS[run]} | " + " | ".join(cell(p) for p in points) + " |")
    return lines


def claims_table(summary: dict[str, Any]) -> list[str]:
    """Paired per-seed differences with a one-sided t-test (is the mean > 0?)."""
    rows = summary.get("comparisons")
    if not rows:
        return []
    lines = [
        "",
        "Paired differences per seed (points; a seed's runs share its warm start), one-sided t-test at 5%:",
        "",
        "| Difference | mean ± std | seeds > 0 | t | mean > 0 at 5%? |",
        "|---|---|---|---|---|",
    ]
    for key, label in CLAIMS.items():
        entry = rows.get(key)
        if entry is None or not entry["n"]:  # e.g. sampled judging, in a results.json from before it was recorded
            continue
        t = f"{entry['t']:.2f}" if entry["t"] is not None else "n/a (no spread)" if entry["n"] > 1 else "n/a"
        significant = "yes" if entry["significant"] else "no"
        lines.append(f"| {label} | {cell(entry)} | {entry['positive']}/{entry['n']} | {t} | {significant} |")
    return lines


BLOCK_STEPS = 10
"""Per-step metrics are kept as means over blocks of this many steps (results.json stays small)."""


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def blocks(steps: list[dict[str, float]], size: int = BLOCK_STEPS) -> dict[str, list[float | None]]:
    """Means of every metric over consecutive blocks of ``size`` steps (NaNs left out), as columns: ``step`` lists
    each block's last step, every metric one mean per block (None for a block where it was never measured).

    Columns and not one record per block: the metric names are written once per run, not once per block, which
    halves results.json."""
    chunks = [steps[start : start + size] for start in range(0, len(steps), size)]
    keys = sorted({k for s in steps for k in s} - {"step"})
    columns: dict[str, list[float | None]] = {"step": [chunk[-1]["step"] for chunk in chunks]}
    for key in keys:
        columns[key] = [stats([s.get(key, math.nan) for s in chunk])["mean"] for chunk in chunks]
    return columns


def compact(results: dict[str, dict]) -> dict[str, dict]:
    """Every run without its per-step metrics (replaced by :func:`blocks`) or its copy of the shared configuration."""
    out = {}
    for name, result in results.items():
        kept = {k: v for k, v in result.items() if k not in ("steps", "config", "world", "losses")}
        if "steps" in result:
            kept["blocks"] = blocks(result["steps"])
        out[name] = _rounded(kept)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.evidence.report FOLDER``: rewrites a run's results.md and plots from its results.json."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path, help="the folder holding results.json (e.g. docs/evidence)")
    folder = parser.parse_args(argv).folder
    document = json.loads((folder / "results.json").read_text())
    write_report(document["runs"], document["meta"], folder)
    print((folder / "results.md").read_text())


def write_report(results: dict[str, dict], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes results.json (summaries, 10-step block means), results.md and the plots into ``out``; returns the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    runs = compact(results)  # summarised as saved: a redraw from results.json gives this summary to the digit
    summary = summarize(runs, meta)
    document = {"meta": meta, "summary": _rounded(summary), "runs": runs}
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown_table(summary, meta))
    plot_all(document["runs"], summary, meta, out)
    return document


if __name__ == "__main__":
    main()
