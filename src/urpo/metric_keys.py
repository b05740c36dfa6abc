"""The names of the metrics a training step logs, defined once.

The modules that compute a metric build its name here, and the modules that read one back (the module's progress
guard, ``urpo plan``'s measurement) look it up here, so a name cannot drift between writer and reader. Names are
``<group>/<name>``; families with a variable part (a row kind, a reward callback, a phase) are functions. Held-out
evaluation logs the rollout metrics again under ``val/`` or ``test/`` (:func:`held_out`).
"""

from __future__ import annotations

# ---- the rollout: rewards and completions (urpo.metrics) ---------------------------------------------------------

REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
REWARD_MISSING_FRAC = "reward/missing_frac"
"""Share of completions no callback rewarded (NaN): left out of the baseline and the loss."""
ZERO_VARIANCE_FRAC = "groups/zero_variance_frac"
"""Share of groups whose rewards are all equal: zero advantage, no gradient."""
ADVANTAGE_ABS_MEAN = "advantage/abs_mean"
COMPLETION_LENGTH_MEAN = "completion/length_mean"
COMPLETION_LENGTH_MAX = "completion/length_max"
COMPLETION_TRUNCATED_FRAC = "completion/truncated_frac"
COMPLETION_TOKENS = "completion/tokens"
COMPLETION_MAX_NEW_TOKENS = "completion/max_new_tokens"
ROWS_PREFIX = "rows/"
"""Rows of each kind in the batch (``rows/<kind>``): counts, not logged for held-out evaluation."""


def kind_reward_mean(kind: str) -> str:
    return f"reward/{kind}_mean"


def kind_reward_std(kind: str) -> str:
    return f"reward/{kind}_std"


def kind_group_spread(kind: str) -> str:
    return f"reward/{kind}_group_spread"


def kind_zero_variance_frac(kind: str) -> str:
    return f"groups/{kind}_zero_variance_frac"


def kind_rows(kind: str) -> str:
    return f"{ROWS_PREFIX}{kind}"


def callback_metric(callback: str, name: str) -> str:
    """A metric a reward callback reports (``RewardResult.metrics``), under the callback's name."""
    return f"reward/{callback}/{name}"


def held_out(split: str, name: str) -> str:
    """A metric of held-out evaluation: ``val/<name>`` or ``test/<name>``."""
    return f"{split}/{name}"


# ---- the update (urpo.update, urpo.module) -----------------------------------------------------------------------

LOSS = "train/loss"
PG_LOSS = "train/pg_loss"
KL = "train/kl"
CLIP_LOW_FRAC = "train/clip_low_frac"
CLIP_HIGH_FRAC = "train/clip_high_frac"
DUAL_CLIP_FRAC = "train/dual_clip_frac"
RATIO_MEAN = "train/ratio_mean"
ENTROPY = "train/entropy"
GRAD_NORM = "train/grad_norm"
EMPTY_UPDATES = "train/empty_updates"
"""Logged (as 1) when no completion of the step got a reward on any rank: the update had nothing to train on."""
ZERO_ADVANTAGE_SKIPPED = "train/zero_advantage_skipped"
PADDING_FRAC = "train/padding_frac"
"""Share of the token positions the update's forward passes ran (this step, all ranks) that were padding."""
SKIPPED_STEPS = "train/skipped_steps"
"""Optimizer steps skipped so far because the gradient was not finite."""
LEARNING_RATE = "train/lr"

# ---- the train/inference mismatch (urpo.correction) --------------------------------------------------------------

MISMATCH_LOGP_ABS_DIFF = "mismatch/logp_abs_diff"
MISMATCH_LOGP_ABS_DIFF_MAX = "mismatch/logp_abs_diff_max"
MISMATCH_KL = "mismatch/kl"
MISMATCH_IS_WEIGHT_MEAN = "mismatch/is_weight_mean"
MISMATCH_IS_CORRECTED_FRAC = "mismatch/is_corrected_frac"

# ---- time (urpo.timing) ------------------------------------------------------------------------------------------

STEP_SECONDS = "time/step"
TOKENS_PER_SECOND = "throughput/tokens_per_s"
ROLLOUT_TOKENS_PER_SECOND = "throughput/rollout_tokens_per_s"


def phase_seconds(phase: str) -> str:
    return f"time/{phase}"


# ---- data selection (urpo.dynamic_sampling, urpo.data.datamodule) ------------------------------------------------

DYNAMIC_SAMPLING_DROPPED = "dynamic_sampling/dropped"
DYNAMIC_SAMPLING_FILLED = "dynamic_sampling/filled"
SKIPPED_RECORDS = "data/skipped_records"


def kind_dropped_groups(kind: str) -> str:
    """Over-sampled groups of a kind that dynamic sampling left out."""
    return f"dynamic_sampling/{kind}_dropped"


def kind_filled_groups(kind: str) -> str:
    """Zero-variance groups of a kind kept to fill the kind's quota."""
    return f"dynamic_sampling/{kind}_filled"


def truncated_prompts(kind: str) -> str:
    return f"data/truncated_{kind}"


def dropped_prompts(kind: str) -> str:
    return f"data/dropped_{kind}"
