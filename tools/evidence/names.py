"""The evidence's runs, metrics and colours by name: one place for the report's tables and the plots."""

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
    "referee_sampled_accuracy": "Judging accuracy, sampled at T = 1",
}
VERDICT_METRICS = {
    "referee_parsed": "Judgments that parsed",
    "referee_accuracy_parsed": "Judging accuracy over parsed judgments",
    "referee_first_shown_top": "Parsed judgments that put the first-shown response on top",
}
"""How the greedy held-out judgments fail: a judging gain can come from more verdicts that parse, from more right
verdicts among them, or only from naming one position (first-shown-top 0 or 1: the order decides, not the answers)."""
JUDGING_METRICS = {
    "referee_sampled_accuracy": "sampled at temperature 1, as RL's preference rollouts judge",
    "referee_accuracy": "greedy",
}
"""Held-out judging is reported both ways: near chance the greedy verdict follows whichever position is ahead by a
hair and swings between evaluations (docs/evidence.md), while the sampled accuracy moves only as the verdicts come
to depend on the answers."""
CLAIMS = {
    "urpo_sampled_judging_gain": "URPO's judging gain over its warm start (sampled)",
    "referee_sampled_judging_gain": "Dedicated referee's judging gain over its warm start (sampled)",
    "verifiable_only_sampled_judging_gain": "Verifiable-only GRPO's judging gain, no preference rows (sampled)",
    "urpo_minus_dedicated_referee_sampled_judging": "URPO minus dedicated referee, judging (sampled)",
    "urpo_judging_gain": "URPO's judging gain over its warm start (greedy)",
    "referee_judging_gain": "Dedicated referee's judging gain over its warm start (greedy)",
    "verifiable_only_judging_gain": "Verifiable-only GRPO's judging gain, no preference rows (greedy)",
    "urpo_minus_dedicated_referee_judging": "URPO minus dedicated referee, judging (greedy)",
    "urpo_minus_baseline_open": "URPO minus frozen-referee baseline, open accuracy",
    "urpo_open_gain": "URPO's open accuracy gain over its warm start",
}
"""The paper's claims as paired differences per seed (report.comparisons), by their key in results.json."""
# The reward callback that judged the open rows of each run (its metrics carry this name).
JUDGE_NAMES = {"urpo": "probed_self_judge", "separate_referee": "frozen_judge"}
COLORS = {
    "warm_start": "#888888",
    "urpo": "#1f77b4",
    "separate_referee": "#d62728",
    "verifiable_only": "#2ca02c",
    "referee": "#ff7f0e",
}


def seed_of(name: str) -> int:
    """The seed of a task or run name such as ``urpo/3`` or ``warm_start/3``."""
    return int(name.rsplit("/", 1)[1])
