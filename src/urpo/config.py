"""Argument groups of :class:`~urpo.module.URPOModule`: each field is a YAML key with its own ``--help`` line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from urpo.correction import CorrectionLevel, CorrectionMode, OldLogprobs
from urpo.errors import ConfigError
from urpo.objective import AdvantageScale, ImportanceLevel, KLEstimator, LossAggregation

PreferenceOrders = Literal["mirrored", "shared"]


@dataclass(frozen=True)
class GRPOArgs:
    """The GRPO objective and how one rollout batch is turned into updates."""

    num_generations: int = 8
    """G: completions sampled per prompt; advantages are relative within each group (GRPO, arXiv 2402.03300)."""
    num_iterations: int = 1
    """Optimizer steps taken on each rollout batch (PPO epochs, mu in GRPO); > 1 keeps the old log-probs."""
    epsilon_low: float = 0.2
    """Lower clip range of the importance ratio, 1 - epsilon_low (PPO, arXiv 1707.06347)."""
    epsilon_high: float = 0.2
    """Upper clip range, 1 + epsilon_high; DAPO's clip-higher uses 0.28 (arXiv 2503.14476)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (arXiv 1912.09729); None: off."""
    importance: ImportanceLevel = "token"
    """'token' ratios (PPO/GRPO) or 'sequence' ratios (GSPO, arXiv 2507.18071)."""
    advantage_scale: AdvantageScale = "group"
    """Divide advantages by the group std (GRPO), the batch std, or 'none' (Dr. GRPO, arXiv 2503.20783)."""
    leave_one_out: bool = False
    """Baseline each reward by the mean of the other rewards of its group (RLOO, arXiv 2402.14740)."""
    loss_aggregation: LossAggregation = "token_mean"
    """'token_mean' over all completion tokens of the step (DAPO), 'seq_mean' (GRPO), 'seq_sum_norm' (Dr. GRPO)."""
    beta: float = 0.0
    """KL coefficient to the reference policy; 0 neither loads nor runs a reference model (DAPO, Dr. GRPO)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator: k1, k2 or k3 (Schulman, 'Approximating KL divergence', 2020); GRPO uses k3."""
    max_tokens_per_micro_batch: int = 8192
    """Token budget (sequences x padded length) of one forward/backward; bounds activation memory."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping; the norm is still logged)."""
    preference_orders: PreferenceOrders = "mirrored"
    """How the G judgments of a preference row see its responses: 'mirrored' shows half of the group one shuffled
    order and the other half the same order reversed; 'shared' shows the whole group one shuffled order. With a
    shared order a judge that always names the same position is right for every judgment of a row or for none, so
    its groups have equal rewards and GRPO cannot move it off its position bias; mirrored, the same bias is right in
    one half and wrong in the other, and the advantage rewards reading the responses instead (docs/referee.md)."""
    skip_zero_advantage: bool = True
    """With ``beta = 0``, skip the forward/backward of completions whose advantage is exactly 0 (every answer of
    their group got the same reward: common, the motivation of DAPO's dynamic sampling). Their gradient is exactly
    zero and their tokens still count in the loss normaliser, so the update is the same, only cheaper. Update
    metrics (entropy, clip fractions, ratios) then describe the completions trained on."""
    max_stalled_steps: int | None = 4
    """Stop the run with an error after this many batches in a row end without an optimizer step, because no
    completion got a reward (all NaN) or the gradient was not finite; such batches do not count towards
    ``max_steps``, so without this bound a reward that never works would keep a run sampling forever. None: never."""

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"num_generations must be >= 2 for group-relative advantages, got {self.num_generations}")
        if self.num_iterations < 1:
            raise ConfigError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if not 0 <= self.epsilon_low < 1:
            raise ConfigError(
                f"epsilon_low must be in [0, 1) (the ratio's lower clip is 1 - it), got {self.epsilon_low}"
            )
        if self.epsilon_high < 0:
            raise ConfigError(f"epsilon_high must be >= 0, got {self.epsilon_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"dual_clip must be > 1 or None, got {self.dual_clip}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.max_tokens_per_micro_batch < 1:
            raise ConfigError(f"max_tokens_per_micro_batch must be >= 1, got {self.max_tokens_per_micro_batch}")
        if self.max_stalled_steps is not None and self.max_stalled_steps < 1:
            raise ConfigError(f"max_stalled_steps must be >= 1 or None, got {self.max_stalled_steps}")


@dataclass(frozen=True)
class LoggingArgs:
    """What is written besides Lightning's scalar metrics."""

    samples_every_n_steps: int = 10
    """Write a table of sample completions with their rewards every N training steps (0: never)."""
    samples_per_kind: int = 2
    """How many rows of each kind go into each sample table."""
    export_dir: str | None = "auto"
    """Where the final policy is exported with save_pretrained: 'auto' is <log_dir>/hf_model; None skips it."""
    parse_warning_after_steps: int | None = 5
    """Warn (once) when, over the last this many steps, the referee's outputs failed to parse at least
    ``parse_warning_share`` of the time; the step's share is always shown in the progress bar as ``parse_fail``.
    None: never warn (see :class:`~urpo.referee_watch.ParseFailureWatch`)."""
    parse_warning_share: float = 0.9
    """The mean parse-failure share that triggers the warning, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.parse_warning_after_steps is not None and self.parse_warning_after_steps < 1:
            raise ConfigError(
                f"logging.parse_warning_after_steps must be >= 1 or None, got {self.parse_warning_after_steps}"
            )
        if not 0 < self.parse_warning_share <= 1:
            raise ConfigError(f"logging.parse_warning_share must be in (0, 1], got {self.parse_warning_share}")


@dataclass(frozen=True)
class RolloutCorrectionArgs:
    """Train/inference mismatch handling, active only with engines that report log-probs (vLLM; not 'hf').

    The importance weight of a sampled token is ``pi_old / pi_engine``, the trainer's probability over the engine's
    (Yao et al. 2025, truncated importance sampling; verl's and TRL's vLLM correction). It multiplies the token's
    policy-gradient term. The mismatch itself is logged every step under ``mismatch/*``.
    """

    level: CorrectionLevel = "token"
    """'token' weights each token; 'sequence' weights a whole completion by the product of its token ratios
    (TRL 1.16's default, with mode 'mask' and cap_max 3); 'none' logs the mismatch and corrects nothing."""
    mode: CorrectionMode = "truncate"
    """'truncate' clamps weights into [cap_min, cap_max] (TIS); 'mask' zeroes those outside (drops their gradient)."""
    cap_max: float | None = 2.0
    """Upper bound C of the weights (TIS uses 2; verl's default too). None: no bound."""
    cap_min: float | None = None
    """Lower bound of the weights. None: no bound."""
    old_logprobs: OldLogprobs = "trainer"
    """pi_old in GRPO's ratio: 'trainer' recomputes it with the trainer's forward (then the weights above correct
    for the engine); 'engine' uses the engine's log-probs directly (verl's bypass mode): the ratio's clip then also
    bounds the mismatch, no weights are applied, and num_iterations > 1 skips the extra old-log-prob forward."""

    def __post_init__(self) -> None:
        for name in ("cap_max", "cap_min"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")
        if self.cap_max is not None and self.cap_min is not None and self.cap_min > self.cap_max:
            raise ConfigError(f"cap_min {self.cap_min} must not exceed cap_max {self.cap_max}")


EngineName = Literal["hf", "vllm"]
