"""PNG plots of the evidence: final held-out scores, held-out curves over training, the open-row rewards' quality."""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

from tools.evidence.names import COLORS, JUDGE_NAMES, METRICS, RUN_LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_final(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars: each metric, each run, mean with a ±std error bar and one dot per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(RUN_LABELS)
    for r, run in enumerate(RUN_LABELS):
        for m, metric in enumerate(METRICS):
            entry = summary[run][metric]
            if entry["mean"] is None:  # not recorded (a results.json from before the metric existed)
                continue
            x = m + (r - (len(RUN_LABELS) - 1) / 2) * width
            ax.bar(
                x,
                100 * entry["mean"],
                width,
                yerr=100 * entry["std"],
                color=COLORS[run],
                capsize=3,
                label=RUN_LABELS[run] if m == 0 else None,
            )
            ax.scatter([x] * len(entry["values"]), [100 * v for v in entry["values"]], s=8, color="black", zorder=3)
    ax.set_xticks(range(len(METRICS)), [textwrap.fill(label, 24) for label in METRICS.values()])
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    # Above the plot, not over the bars (which may reach any height).
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(RUN_LABELS), frameon=False)
    fig.suptitle("Held-out scores after RL (bars: mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curve(
    results: dict[str, dict], run: str, seeds: list[int], metric: str
) -> tuple[list[int], list[float], list[float]]:
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
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, (metric, title) in zip(axes, METRICS.items()):
        runs = [r for r in RUN_LABELS if r != "warm_start"] + (["referee"] if metric.startswith("referee") else [])
        for run in runs:
            steps, mean, std = _curve(results, run, seeds, metric)
            label = "baseline's referee (trained, then frozen)" if run == "referee" else RUN_LABELS[run]
            ax.plot(steps, mean, color=COLORS[run], label=label, linestyle="--" if run == "referee" else "-")
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=COLORS[run],
                alpha=0.15,
            )
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylabel("held-out accuracy (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _block_series(results: dict[str, dict], run: str, seeds: list[int], key: str) -> tuple[list[int], list[float]]:
    """A per-step metric as 10-step block means (results.json's ``blocks``), averaged over seeds; NaN where absent."""
    series = [results[f"{run}/{seed}"]["blocks"] for seed in seeds]
    length = min(len(s["step"]) for s in series)
    steps = series[0]["step"][:length]
    columns = [s.get(key, [None] * length) for s in series]  # a seed that never measured it adds nothing
    return steps, [_mean_measured([column[i] for column in columns]) for i in range(length)]


def _mean_measured(values: list[float | None]) -> float:
    """The mean of the values that were measured (not None or NaN); NaN when none was."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def plot_rewards(results: dict[str, dict], meta: dict[str, Any], path: Path) -> None:
    """During training, on the open rows: how often the reward ordered answers as the truth does, and how often
    the sampled answers were right (means over 10-step blocks and over seeds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title) in zip(
        axes,
        (
            ("truth_agreement", "Open-row reward agrees with truth (pairs)"),
            ("open_correct", "Open-row answers sampled in training that are right"),
        ),
    ):
        for run, judge in JUDGE_NAMES.items():
            steps, mean = _block_series(results, run, meta["seeds"], f"reward/{judge}/{key}")
            ax.plot(steps, [100 * v for v in mean], color=COLORS[run], label=RUN_LABELS[run], marker=".")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylabel("%")
    axes[0].axhline(50, color="gray", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_referee(results: dict[str, dict], meta: dict[str, Any], path: Path) -> None:
    """The referee learning from its preference rows: held-out judging accuracy sampled at T = 1 per seed (URPO),
    the means of URPO and the dedicated referee, sampled and greedy; and what GRPO saw on those rows: the share of
    groups with all rewards equal."""
    plt = _pyplot()
    seeds = meta["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for seed in seeds:
        history = results[f"urpo/{seed}"]["history"]
        axes[0].plot(
            [h["step"] for h in history],
            [100 * h["referee_sampled_accuracy"] for h in history],
            color=COLORS["urpo"],
            alpha=0.35,
            linewidth=0.9,
        )
    for run, label in (("urpo", "URPO"), ("referee", "dedicated referee")):
        steps, mean, _ = _curve(results, run, seeds, "referee_sampled_accuracy")
        axes[0].plot(
            steps,
            mean,
            color=COLORS[run],
            label=f"{label}, sampled (mean{'; thin: seeds' if run == 'urpo' else ''})",
            linewidth=2,
            marker="o",
        )
        steps, mean, _ = _curve(results, run, seeds, "referee_accuracy")
        axes[0].plot(steps, mean, color=COLORS[run], label=f"{label}, greedy (mean)", linewidth=1, linestyle="--")
    axes[0].set_title("Held-out judging accuracy during RL", fontsize=10)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    for run, label in (("urpo", "URPO"), ("referee", "dedicated referee")):
        steps, mean = _block_series(results, run, seeds, "groups/preference_zero_variance_frac")
        axes[1].plot(steps, [100 * v for v in mean], color=COLORS[run], label=label, marker=".")
    axes[1].set_title("Preference groups with all G rewards equal (no signal)", fontsize=10)
    axes[1].set_ylabel("% of groups")
    axes[1].set_ylim(0, 100)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("RL step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(results: dict[str, dict], summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    plot_final(summary, out / "final_scores.png")
    plot_curves(results, meta, out / "curves.png")
    plot_rewards(results, meta, out / "open_rewards.png")
    plot_referee(results, meta, out / "referee.png")
