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
}
# The reward callback that judged the open rows of each run (its metrics carry this name).
JUDGE_NAMES = {"urpo": "probed_self_judge", "separate_referee": "frozen_judge"}
COLORS = {
    "warm_start": "#888888",
    "urpo": "#1f77b4",
    "separate_referee": "#d62728",
    "verifiable_only": "#2ca02c",
    "referee": "#ff7f0e",
}
