"""The GRPO objective as pure tensor functions: advantages, importance ratios, KL penalties and the clipped loss.

Every function takes tensors and scalars (never a config object) and keeps the device and dtype of its inputs.
Shapes: ``N`` prompts with ``G`` completions each; ``B`` sequences (completions) of ``T`` tokens in a micro-batch;
``mask`` is 1 (or True) on completion tokens and 0 on padding. Padding positions may hold any value, even
``inf``/``NaN`` log-probabilities: they are removed with ``torch.where`` rather than multiplied by zero. Losses are
normalised by counts of the *whole optimizer step* (see :func:`aggregate`), so micro-batching does not change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from urpo.errors import ConfigError

__all__ = [
    "AdvantageScale",
    "ImportanceLevel",
    "KLEstimator",
    "LossAggregation",
    "PolicyLossOutput",
    "aggregate",
    "entropy_from_logits",
    "group_advantages",
    "importance_ratio",
    "kl_penalty",
    "masked_mean",
    "policy_loss",
    "sequence_log_ratio",
]

AdvantageScale = Literal["group", "batch", "none"]
KLEstimator = Literal["k1", "k2", "k3"]
LossAggregation = Literal["token_mean", "seq_mean", "seq_sum_norm"]
ImportanceLevel = Literal["token", "sequence"]

_LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: far beyond any clip range, yet safe from overflow in fp16/bf16 sums
_KL_CLAMP = 10.0  # bound on the per-token KL estimate, as verl and NeMo-RL do


def _check_choice(name: str, value: str, literal: object) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def _check_same_shape(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    if reference.dim() != 2:
        raise ConfigError(f"{reference_name} must be 2-D [B, T], got shape {tuple(reference.shape)}")
    for name, other in others.items():
        if other is not None and other.shape != reference.shape:
            expected = tuple(reference.shape)
            raise ConfigError(f"{name} must have the shape {expected} of {reference_name}, got {tuple(other.shape)}")


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is set.

    Args:
        values: Values of any shape.
        mask: Same shape as ``values``; nonzero / True marks the positions to average.
        dim: Dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        The masked mean (scalar, or ``values`` without ``dim``); 0, not NaN, where nothing is masked in.
    """
    keep = mask.bool()  # same shape as values
    total = torch.where(keep, values, torch.zeros_like(values)).sum(dim=dim)  # [] or reduced
    count = keep.sum(dim=dim).clamp(min=1).to(total.dtype)  # [] or reduced
    return total / count


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position, computed stably via ``log_softmax``.

    Args:
        logits: Unnormalised scores, shape [B, T, V]; ``-inf`` entries (banned tokens) are allowed.

    Returns:
        Entropy in nats, shape [B, T], in the dtype of ``logits``.
    """
    logp = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    probs = logp.exp()  # [B, T, V]
    # -inf log-probs (p = 0) contribute 0; filling them before the product keeps both value and gradient finite.
    safe_logp = logp.masked_fill(~torch.isfinite(logp), 0.0)  # [B, T, V]
    return -(probs * safe_logp).sum(dim=-1)  # [B, T]


def _masked_std(values: Tensor, valid: Tensor, mean: Tensor, count: Tensor, dim: int | None) -> Tensor:
    """Unbiased (Bessel-corrected) std over valid entries; 0 where fewer than two entries are valid."""
    centred = torch.where(valid, values - mean, torch.zeros_like(values))  # [N, G]
    sq_sum = (centred**2).sum(dim=dim, keepdim=dim is not None)  # [N, 1] or []
    var = sq_sum / (count - 1).clamp(min=1)  # [N, 1] or []
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))  # [N, 1] or []


def zero_variance(group: torch.Tensor) -> bool:
    """Whether a group's valid rewards are all equal (or fewer than two): its advantages are all zero."""
    valid = group[~torch.isnan(group)]  # [K]
    return valid.numel() < 2 or bool((valid == valid[0]).all())


def group_advantages(
    rewards: Tensor, scale: AdvantageScale = "group", leave_one_out: bool = False, eps: float = 1e-4
) -> Tensor:
    """Group-relative advantages of GRPO: each completion's reward against the other completions of its prompt.

    ``NaN`` rewards mean "no reward" (e.g. an unparsable judgment): they take no part in any mean or std and get
    advantage 0, so the output never contains NaN.

    Baseline: the mean of the valid rewards of the group (GRPO, Shao et al. 2024, arXiv 2402.03300), or with
    ``leave_one_out`` the mean of the *other* valid rewards of the group (RLOO, Ahmadian et al. 2024,
    arXiv 2402.14740). A group with at most one valid reward has nothing to compare against: advantage 0.

    Scale, dividing by ``std + eps``:

    - ``"group"``: the std of the group's valid rewards (original GRPO).
    - ``"batch"``: the std of all valid (raw) rewards of the batch, the baseline staying per group: the "group
      mean, batch std" of REINFORCE++-baseline (Hu 2025, arXiv 2501.03262, which takes the std of the centred
      rewards instead); it does not inflate groups whose rewards barely differ.
    - ``"none"``: no division (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783), which removes the difficulty bias
      of per-group std.

    Std convention: the unbiased (Bessel-corrected, ``n - 1``) std over valid entries, as ``torch.std`` and TRL's
    GRPO use; it is defined as 0 where fewer than two entries are valid.

    Args:
        rewards: Rewards, shape [N, G] (N prompts x G completions), possibly with NaN.
        scale: How to scale the centred rewards.
        leave_one_out: Use the RLOO baseline instead of the group mean.
        eps: Added to the std before dividing, so that groups of equal rewards give 0, not NaN.

    Returns:
        Advantages, shape [N, G], floating point, no NaN.
    """
    _check_choice("scale", scale, AdvantageScale)
    if rewards.dim() != 2:
        raise ConfigError(f"rewards must be 2-D [N, G], got shape {tuple(rewards.shape)}")
    if eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())  # [N, G]
    valid = ~torch.isnan(rewards)  # [N, G]
    values = torch.where(valid, rewards, torch.zeros_like(rewards))  # [N, G]
    count = valid.sum(dim=1, keepdim=True).to(rewards.dtype)  # [N, 1]
    total = values.sum(dim=1, keepdim=True)  # [N, 1]
    mean = total / count.clamp(min=1)  # [N, 1]
    baseline = (total - values) / (count - 1).clamp(min=1) if leave_one_out else mean.expand_as(values)  # [N, G]
    centred = values - baseline  # [N, G]
    if scale != "none":
        if scale == "group":
            std = _masked_std(values, valid, mean, count, dim=1)  # [N, 1]
        else:
            n_all = valid.sum().to(rewards.dtype)  # []
            std = _masked_std(values, valid, values.sum() / n_all.clamp(min=1), n_all, dim=None)  # []
        denom = std + eps  # [N, 1] or []
        # A zero std means equal rewards, hence zero centred rewards: divide by 1 so eps = 0 gives 0, not 0/0.
        centred = centred / torch.where(denom > 0, denom, torch.ones_like(denom))  # [N, G]
    usable = valid & (count > 1)  # [N, G]
    return torch.where(usable, centred, torch.zeros_like(centred))  # [N, G]


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's ``log s_i``: the mean of ``logp - old_logp`` over each sequence's completion tokens.

    Args:
        logp: Current-policy log-probabilities of the sampled tokens, shape [B, T].
        old_logp: Sampling-policy log-probabilities, shape [B, T].
        mask: Completion-token mask, shape [B, T].

    Returns:
        Shape [B]; 0 for a sequence without completion tokens.
    """
    _check_same_shape("logp", logp, old_logp=old_logp, mask=mask)
    return masked_mean(logp - old_logp, mask, dim=1)  # [B]


def importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: ImportanceLevel = "token") -> Tensor:
    """Importance ratios of the current over the sampling policy, one per token.

    - ``"token"``: ``exp(logp - old_logp)`` per token (PPO / GRPO); the log-ratio is clamped to [-20, 20].
    - ``"sequence"`` (GSPO, Zheng et al. 2025, arXiv 2507.18071): ``s_i = exp(mean_t (logp - old_logp))`` over the
      completion tokens (log clamped likewise), returned per token as ``exp(sg(log s_i) + logp - sg(logp))``: its
      value is ``s_i`` on every token, its gradient flows through each token's own ``logp`` (GSPO-token); with
      ``seq_mean`` aggregation this is GSPO's objective.

    Args:
        logp: Current-policy log-probabilities of the sampled tokens, shape [B, T].
        old_logp: Sampling-policy log-probabilities, shape [B, T]; treated as constants.
        mask: Completion-token mask, shape [B, T].
        level: Token- or sequence-level ratio.

    Returns:
        Ratios, shape [B, T]. Padding holds 1 (token level) or ``s_i`` (sequence level); callers mask it out.
    """
    _check_choice("level", level, ImportanceLevel)
    _check_same_shape("logp", logp, old_logp=old_logp, mask=mask)
    keep = mask.bool()  # [B, T]
    # Zero padding before any arithmetic, so inf/NaN there cannot leak into values or gradients.
    cur = torch.where(keep, logp, torch.zeros_like(logp))  # [B, T]
    old = torch.where(keep, old_logp.detach(), torch.zeros_like(logp))  # [B, T]
    if level == "token":
        return (cur - old).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp()  # [B, T]
    log_s = sequence_log_ratio(cur, old, keep).detach()  # [B]
    log_s = log_s.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B]
    return (log_s[:, None] + cur - cur.detach()).exp()  # [B, T]


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || ref) from the log-probabilities of tokens sampled from pi.

    With ``log_r = ref_logp - logp`` (Schulman, "Approximating KL divergence", 2020):
    ``k1 = -log_r`` (unbiased, can be negative), ``k2 = 0.5 * log_r**2`` (biased, low variance),
    ``k3 = exp(log_r) - log_r - 1`` (unbiased, always >= 0; GRPO's choice).
    ``log_r`` is clamped to [-20, 20] and the estimate to [-10, 10] (as verl and NeMo-RL do) against overflow.

    Args:
        logp: Current-policy log-probabilities of the sampled tokens, shape [B, T].
        ref_logp: Reference-policy log-probabilities of the same tokens, shape [B, T]; treated as constants.
        estimator: Which estimator.

    Returns:
        Per-token KL estimates, shape [B, T] (padding not masked: aggregate with the mask).
    """
    _check_choice("estimator", estimator, KLEstimator)
    if logp.shape != ref_logp.shape:
        raise ConfigError(f"ref_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    log_r = (ref_logp.detach() - logp).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)  # [B, T]
    if estimator == "k1":
        kl = -log_r  # [B, T]
    elif estimator == "k2":
        kl = 0.5 * log_r**2  # [B, T]
    else:
        kl = log_r.exp() - log_r - 1.0  # [B, T]
    return kl.clamp(-_KL_CLAMP, _KL_CLAMP)  # [B, T]


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: LossAggregation,
    num_tokens: float | Tensor,
    num_sequences: float | Tensor,
    max_completion_length: int,
) -> Tensor:
    """Reduce per-token values to this micro-batch's contribution to the loss of a whole optimizer step.

    The counts are those of the *whole step* (all micro-batches of its gradient accumulation), so the sum of the
    contributions equals the step's loss, with the same gradient, however the step is split:

    - ``"token_mean"`` (DAPO, Yu et al. 2025, arXiv 2503.14476): ``sum(values * mask) / num_tokens``.
    - ``"seq_mean"`` (original GRPO): ``sum_i [sum_t (values * mask)_i / max(len_i, 1)] / num_sequences``.
    - ``"seq_sum_norm"`` (Dr. GRPO, arXiv 2503.20783): ``sum(values * mask) / (max_completion_length *
      num_sequences)``, a constant normaliser free of length bias.

    Under data parallelism where gradients are *averaged* over ``W`` ranks, the caller passes global counts
    (summed over ranks) and multiplies the contribution by ``W``; this function knows nothing of ranks.

    Args:
        values: Per-token values, shape [B, T].
        mask: Completion-token mask, shape [B, T].
        mode: Aggregation mode.
        num_tokens: Completion tokens in the whole step (used by ``token_mean``); values below 1 count as 1.
        num_sequences: Sequences in the whole step (used by ``seq_mean`` and ``seq_sum_norm``); below 1 count as 1.
        max_completion_length: Generation length limit (used by ``seq_sum_norm``).

    Returns:
        A scalar in the dtype of ``values``.
    """
    _check_choice("mode", mode, LossAggregation)
    _check_same_shape("values", values, mask=mask)
    if max_completion_length < 1:
        raise ConfigError(f"max_completion_length must be >= 1, got {max_completion_length}")
    keep = mask.bool()  # [B, T]
    kept = torch.where(keep, values, torch.zeros_like(values))  # [B, T]
    if mode == "token_mean":
        return kept.sum() / _as_count(num_tokens, values)  # []
    if mode == "seq_mean":
        lengths = keep.sum(dim=1).clamp(min=1).to(values.dtype)  # [B]
        return (kept.sum(dim=1) / lengths).sum() / _as_count(num_sequences, values)  # []
    return kept.sum() / (max_completion_length * _as_count(num_sequences, values))  # []


def _as_count(count: float | Tensor, like: Tensor) -> Tensor:
    """A count as a scalar tensor on ``like``'s device and dtype, at least 1 so empty steps give 0, not NaN."""
    return torch.as_tensor(count, device=like.device, dtype=like.dtype).clamp(min=1)  # []


@dataclass(frozen=True)
class PolicyLossOutput:
    """What :func:`policy_loss` returns, all scalars: ``loss``, ``pg_loss`` and ``kl`` are aggregated contributions
    (see :func:`aggregate`) with gradients; the rest are detached statistics over this micro-batch's tokens."""

    loss: Tensor  # this micro-batch's contribution to the step loss: pg_loss + beta * kl
    pg_loss: Tensor  # the clipped policy-gradient part, same aggregation
    kl: Tensor | None  # the aggregated KL estimate (before beta), or None when beta == 0
    clip_low_frac: Tensor  # fraction of tokens clipped below: A < 0 and r < 1 - eps_low
    clip_high_frac: Tensor  # fraction of tokens clipped above: A > 0 and r > 1 + eps_high
    dual_clip_frac: Tensor  # fraction of tokens where the dual-clip bound was active (0 when disabled)
    ratio_mean: Tensor  # mean importance ratio


def _validate_policy_args(
    logp: Tensor,
    advantages: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    ref_logp: Tensor | None,
    beta: float,
) -> None:
    if advantages.shape != logp.shape[:1]:
        raise ConfigError(f"advantages must have shape [B] = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
    if eps_low < 0 or eps_high < 0:
        raise ConfigError(f"eps_low and eps_high must be >= 0, got {eps_low} and {eps_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ConfigError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ConfigError(f"beta = {beta} > 0 needs ref_logp (reference log-probabilities), got None")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    importance: ImportanceLevel = "token",
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    aggregation: LossAggregation = "token_mean",
    num_tokens: float | Tensor | None = None,
    num_sequences: float | Tensor | None = None,
    max_completion_length: int | None = None,
) -> PolicyLossOutput:
    """The clipped GRPO surrogate with optional dual clip and KL penalty, aggregated over a micro-batch.

    Per token (PPO, Schulman et al. 2017): ``L = max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))``; an
    ``eps_high`` above ``eps_low`` is DAPO's clip-higher (arXiv 2503.14476). With ``dual_clip = c > 1``
    (Ye et al. 2020, arXiv 1912.09729), for ``A < 0``: ``L = min(L, -A * c)``, bounding the loss of tokens whose
    ratio has run far off. With ``beta > 0``, ``beta * kl_penalty(logp, ref_logp)`` is added per token.

    Args:
        logp: Current-policy log-probabilities of the sampled tokens, shape [B, T].
        old_logp: Sampling-policy log-probabilities, shape [B, T]; treated as constants.
        advantages: One advantage per sequence, shape [B]; treated as constants.
        mask: Completion-token mask, shape [B, T] (float or bool).
        eps_low: Lower clip range (ratio floor ``1 - eps_low``), >= 0.
        eps_high: Upper clip range (ratio ceiling ``1 + eps_high``), >= 0.
        dual_clip: Dual-clip constant ``c > 1``, or None to disable.
        importance: Token-level (GRPO) or sequence-level (GSPO) importance ratio.
        ref_logp: Reference-policy log-probabilities, shape [B, T]; required when ``beta > 0``.
        beta: KL coefficient, >= 0; 0 skips the KL term (``kl`` is None).
        kl_estimator: KL estimator for the penalty.
        aggregation: How to reduce tokens to a scalar; see :func:`aggregate`, which also documents the counts.
        num_tokens: Completion tokens of the whole step; defaults to this micro-batch's ``mask.sum()``.
        num_sequences: Sequences of the whole step; defaults to this micro-batch's ``B``.
        max_completion_length: Generation limit for ``seq_sum_norm``; defaults to ``T``.

    Returns:
        The aggregated loss, its parts and clipping statistics.

    Raises:
        ConfigError: (a ``ValueError``) on mismatched shapes or out-of-range arguments.
    """
    _check_same_shape("logp", logp, old_logp=old_logp, mask=mask, ref_logp=ref_logp)
    _validate_policy_args(logp, advantages, eps_low, eps_high, dual_clip, ref_logp, beta)
    keep = mask.bool()  # [B, T]
    counts = dict(
        num_tokens=keep.sum() if num_tokens is None else num_tokens,
        num_sequences=logp.shape[0] if num_sequences is None else num_sequences,
        max_completion_length=logp.shape[1] if max_completion_length is None else max_completion_length,
    )
    ratio = importance_ratio(logp, old_logp, keep, importance)  # [B, T]
    adv = advantages.detach().to(logp.dtype)[:, None].expand_as(ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    per_token = torch.maximum(unclipped, clipped)  # [B, T]
    dual_active = torch.zeros_like(keep)  # [B, T]
    if dual_clip is not None:
        bound = -adv * dual_clip  # [B, T]
        dual_active = (adv < 0) & (per_token > bound)  # [B, T]
        per_token = torch.where(dual_active, bound, per_token)  # [B, T]
    pg_loss = aggregate(per_token, keep, aggregation, **counts)  # []
    kl = None
    loss = pg_loss  # []
    if beta > 0 and ref_logp is not None:
        # Zero padding first, so inf/NaN log-probs there cannot reach the gradient through the estimator.
        cur, ref = (torch.where(keep, x, torch.zeros_like(x)) for x in (logp, ref_logp))  # [B, T] each
        kl = aggregate(kl_penalty(cur, ref, kl_estimator), keep, aggregation, **counts)  # []
        loss = pg_loss + beta * kl  # []
    with torch.no_grad():
        low = (adv < 0) & (ratio < 1.0 - eps_low)  # [B, T]
        high = (adv > 0) & (ratio > 1.0 + eps_high)  # [B, T]
        stats = [masked_mean(flag.to(logp.dtype), keep) for flag in (low, high, dual_active)]
        ratio_mean = masked_mean(ratio, keep)  # []
    return PolicyLossOutput(loss, pg_loss, kl, *stats, ratio_mean=ratio_mean)
