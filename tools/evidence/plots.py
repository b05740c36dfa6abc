"""PNG plots of the evidence: final held-out scores, held-out curves over training, and the open-row rewards' quality."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from tools.evidence.report import COLORS, JUDGE_NAMES, METRICS, RUN_LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_final(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars: each metric, each run, mean with a ±std error bar and one dot per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(RUN_LABELS)
    for r, run in enumerate(RUN_LABELS):
        for m, metric in enumerate(METRICS):
            entry = summary[run][metric]
            x = m + (r - (len(RUN_LABELS) - 1) / 2) * width
            ax.bar(x, 100 * entry["mean"], width, yerr=100 * entry["std"], color=COLORS[run], capsize=3,
                   label=RUN_LABELS[run] if m == 0 else None)  # fmt: skip
            ax.scatter([x] * len(entry["values"]), [100 * v for v in entry["values"]], s=8, color="black", zorder=3)
    ax.set_xticks(range(len(METRICS)), list(METRICS.values()))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Held-out scores after RL (bars: mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curve(results: dict[str, dict], run: str, seeds: list[int], metric: str) -> tuple[list[int], list[float], list[float]]:
    histories = [results[f"{run}/{s}"]["history"] for s in seeds]
    steps = [h["step"] for h in histories[0]]
    means, stds = [], []
    for i in range(len(steps)):
        values = [h[i][metric] for h in histories if i < len(h)]
        means.append(100 * statistics.fmean(values))
        stds.append(100 * (statistics.stdev(values) if len(values) > 1 else 0.0))
    return steps, means, stds


def plot_curves(results: dict[str, dict], meta: dict[str, Any], path: Path) -> None:
    """Held-out scores during training, mean ± std band; the baseline's referee while it trains, then frozen."""
    plt = _pyplot()
    seeds = meta["seeds"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 3.8))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        runs = [r for r in RUN_LABELS if r != "warm_start"] + (["referee"] if metric == "referee_accuracy" else [])
        for run in runs:
            steps, mean, std = _curve(results, run, seeds, metric)
            label = "baseline's referee (trained, then frozen)" if run == "referee" else RUN_LABELS[run]
            ax.plot(steps, mean, color=COLORS[run], label=label, linestyle="--" if run == "referee" else "-")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=COLORS[run], alpha=0.15)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylabel("held-out accuracy (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(statistics.fmean(chunk) if chunk else math.nan)
    return out


def plot_rewards(results: dict[str, dict], meta: dict[str, Any], path: Path) -> None:
    """During training, on the open rows: how often the reward ordered answers as the truth does, and how often
    the sampled answers were right (moving average over 10 steps, mean over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title) in zip(axes, (("truth_agreement", "Open-row reward agrees with truth (pairs)"),
                                        ("open_correct", "Open-row answers sampled in training that are right"))):
        for run, judge in JUDGE_NAMES.items():
            series = [[s.get(f"reward/{judge}/{key}", math.nan) for s in results[f"{run}/{seed}"]["steps"]] for seed in meta["seeds"]]
            length = min(len(s) for s in series)
            mean = [statistics.fmean([s[i] for s in series if not math.isnan(s[i])] or [math.nan]) for i in range(length)]
            ax.plot(range(1, length + 1), [100 * v for v in _smooth(mean, 10)], color=COLORS[run], label=RUN_LABELS[run])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylabel("%")
    axes[0].axhline(50, color="gray", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(results: dict[str, dict], summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    plot_final(summary, out / "final_scores.png")
    plot_curves(results, meta, out / "curves.png")
    plot_rewards(results, meta, out / "open_rewards.png")
