"""The train/inference mismatch: pure tensor functions that measure it and correct the policy gradient for it.

A rollout engine such as vLLM samples with its own kernels (and maybe another dtype), so the probability it gave a
token, ``pi_engine``, differs a little from the trainer's ``pi_old`` for the same weights. GRPO's ratio is taken
against the trainer's ``pi_old``, which makes the samples slightly off-policy; truncated importance sampling (TIS;
Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training", as in verl and TRL)
reweights each token's policy-gradient term by ``w = min(exp(logp_old - logp_engine), C)``.

Shapes: ``B`` sequences of ``T`` completion tokens; ``mask`` is 1 on completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from urpo.objective import masked_mean
from urpo.sequences import split_micro_batches

if TYPE_CHECKING:
    from urpo.args import RolloutCorrectionArgs
    from urpo.rewards.base import Episode
    from urpo.sequences import TrainSequence
    from urpo.update import UpdatePlan

CorrectionLevel = Literal["none", "token", "sequence"]
CorrectionMode = Literal["truncate", "mask"]


def importance_weights(
    old_logp: Tensor, engine_logp: Tensor, mask: Tensor, level: CorrectionLevel, mode: CorrectionMode,
    cap_max: float | None, cap_min: float | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Importance weights ``pi_old / pi_engine`` of the sampled tokens, truncated or masked outside the bounds.

    - ``token``: one weight per token, ``exp(logp_old - logp_engine)``.
    - ``sequence``: one weight per sequence, ``exp(sum_t (logp_old - logp_engine))`` (TRL's sequence modes), on every
      token of the sequence.
    - ``truncate`` clamps into the bounds; ``mask`` sets weights outside them to 0 (the token or sequence then gives
      no gradient).

    Args:
        old_logp: Trainer log-probs of the sampled tokens under the sampling weights, shape [B, T].
        engine_logp: The engine's log-probs of the same tokens, shape [B, T].
        mask: Completion-token mask, shape [B, T].
        level: Per token, per sequence, or 'none' (all ones).
        mode: Truncate or mask out-of-bound weights.
        cap_max: Upper bound C (None: none).
        cap_min: Lower bound (None: none).

    Returns:
        The weights, shape [B, T], detached, 1 on padding; and where they were truncated or masked, [B, T] bool.
    """
    keep = mask.bool()  # [B, T]
    if level == "none":
        return torch.ones_like(old_logp), torch.zeros_like(keep)
    diff = torch.where(keep, old_logp.detach() - engine_logp.detach(), torch.zeros_like(old_logp))  # [B, T]
    if level == "sequence":
        diff = diff.sum(dim=1, keepdim=True).expand_as(diff)  # [B, T]
    weight = diff.clamp(max=20.0).exp()  # [B, T]; exp(20) is beyond any useful cap and safe from overflow
    outside = torch.zeros_like(keep)  # [B, T]
    if cap_max is not None:
        outside |= weight > cap_max
    if cap_min is not None:
        outside |= weight < cap_min
    if mode == "truncate":
        weight = weight.clamp(min=cap_min, max=cap_max) if outside.any() else weight  # [B, T]
    else:
        weight = torch.where(outside, torch.zeros_like(weight), weight)  # [B, T]
    return torch.where(keep, weight, torch.ones_like(weight)), outside & keep  # [B, T] each


def scale_gradient(logp: Tensor, weight: Tensor) -> Tensor:
    """``logp`` with the same values but its gradient multiplied by ``weight`` (constant), per element.

    GRPO's per-token loss depends on the sequence's tokens only through their own ``logp`` (the GSPO sequence ratio
    is built with a stop-gradient for the same reason), so scaling each token's gradient by ``w`` is exactly the
    gradient of ``w * loss_t``: the IS-weighted policy gradient, while ratios, clip statistics and the logged loss
    keep their unweighted values.

    Args:
        logp: Log-probs with gradient, shape [B, T].
        weight: Constant weights, shape [B, T].

    Returns:
        Shape [B, T], equal to ``logp`` in value.
    """
    weight = weight.detach().to(logp.dtype)  # [B, T]
    return weight * logp + ((1.0 - weight) * logp).detach()  # [B, T]


@torch.no_grad()
def mismatch_metrics(
    old_logp: Tensor, engine_logp: Tensor, mask: Tensor, weight: Tensor, corrected: Tensor
) -> dict[str, float]:
    """How far the engine's sampling distribution is from the trainer's, over the completion tokens.

    Returns:
        ``mismatch/logp_abs_diff`` (mean ``|logp_engine - logp_old|``), ``mismatch/logp_abs_diff_max``,
        ``mismatch/kl`` (k3 estimate of KL(pi_engine || pi_old) from the engine's samples: ``exp(d) - d - 1`` with
        ``d = logp_old - logp_engine``), the importance weights' mean, and the share of tokens whose weight was
        truncated or masked (``mismatch/is_corrected_frac``).
    """
    keep = mask.bool()  # [B, T]
    d = torch.where(keep, old_logp.float() - engine_logp.float(), torch.zeros_like(old_logp, dtype=torch.float32))
    raw = d.clamp(max=20.0).exp()  # [B, T]
    return {
        "mismatch/logp_abs_diff": masked_mean(d.abs(), keep).item(),
        "mismatch/logp_abs_diff_max": d.abs().max().item() if keep.any() else 0.0,
        "mismatch/kl": masked_mean(raw - d - 1.0, keep).item(),
        "mismatch/is_weight_mean": masked_mean(weight.float(), keep).item(),
        "mismatch/is_corrected_frac": masked_mean(corrected.float(), keep).item(),
    }


def pack_logprobs(rows: Sequence[Sequence[float]], width: int, like: Tensor) -> Tensor:
    """Right-pad per-sequence log-prob lists into ``[B, width]`` on ``like``'s device (float32), as completions are."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)  # [B, C]
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row)[:width], dtype=torch.float32)
    return out.to(like.device)


def correct(
    logp: Tensor, old_logp: Tensor, engine_logp: Tensor | None, mask: Tensor, args: RolloutCorrectionArgs
) -> tuple[Tensor, dict[str, float]]:
    """The log-probs to put in the loss, with gradients importance-weighted for the engine's sampling, and the
    mismatch metrics; ``(logp, {})`` unchanged when the engine reported no log-probs (the HF engine).

    The weights scale every per-token term's gradient, the KL penalty's included: it too is an expectation over the
    engine's samples.

    Args:
        logp: Current trainer log-probs, shape [B, T], with gradient.
        old_logp: pi_old of GRPO's ratio, shape [B, T] (the trainer's, or the engine's in bypass mode).
        engine_logp: The engine's log-probs, shape [B, T], or None.
        mask: Completion-token mask, shape [B, T].
        args: The correction settings.
    """
    if engine_logp is None:
        return logp, {}
    # With the engine's log-probs as pi_old there is nothing left to correct; compare the trainer's to them instead.
    trainer = old_logp if args.old_logprobs == "trainer" else logp.detach()  # [B, T]
    level = args.level if args.old_logprobs == "trainer" else "none"
    weight, corrected = importance_weights(trainer, engine_logp, mask, level, args.mode, args.cap_max, args.cap_min)
    stats = mismatch_metrics(trainer, engine_logp, mask, weight, corrected)
    return (scale_gradient(logp, weight) if level != "none" else logp), stats


def behaviour_rows(episodes: Sequence[Episode], sequences: Sequence[TrainSequence]) -> list[list[float]] | None:
    """The engine's log-probs of each training sequence's tokens, aligned with ``sequences``; None when the engine
    reported none (rollout keeps them in ``episode.meta['completion_logprobs']``)."""
    if any(e.meta.get("completion_logprobs") is None for e in episodes):
        return None
    return [list(episodes[s.episode].meta["completion_logprobs"][s.sample]) for s in sequences]


def pack_for_plan(
    plan: UpdatePlan, sequences: Sequence[TrainSequence], behaviour: list[list[float]] | None, max_tokens: int
) -> list[Tensor] | None:
    """``behaviour`` packed like the plan's micro-batches, ``[B, C]`` each (zeros in padding micro-batches).

    ``max_tokens`` must be the budget the plan was built with: its grouping is recomputed here.
    """
    if behaviour is None:
        return None
    for seq, row in zip(sequences, behaviour):
        if len(row) != len(seq.completion_ids):
            found, expected = len(row), len(seq.completion_ids)
            raise RuntimeError(f"engine log-probs cover {found} tokens of a {expected}-token completion")
    groups = split_micro_batches(sequences, max_tokens)
    packed = []
    for index in range(plan.num_micro_batches):
        batch, _ = plan.micro_batch(index)
        size, width = batch.completion_ids.shape
        rows = [behaviour[i] for i in groups[index]] if index < len(groups) else [[]] * size
        if len(rows) != size:
            raise RuntimeError(f"micro-batch {index} holds {size} sequences but {len(rows)} behaviour rows")
        packed.append(pack_logprobs(rows, width, batch.completion_ids))  # [B, C]
    return packed
