"""The update phase: ``num_iterations`` optimizer steps over a step's training sequences, in micro-batches.

Every rank must run the same number of forward/backward passes (FSDP gathers parameters collectively in each), and
the loss must be normalised by the counts of the whole step across ranks. :class:`UpdatePlan` settles both before
the first micro-batch: ranks with fewer micro-batches run padding micro-batches whose loss is multiplied by zero.
:class:`Updater` then runs the loop. Neither knows the LightningModule: the module hands them plain values and
functions (:class:`Ranks` for the collectives, the backward pass and the optimizer step as callables).
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from urpo import metric_keys as keys
from urpo.correction import correct
from urpo.episode import TrainSequence
from urpo.logprobs import CompletionScores, score_completions
from urpo.objective import masked_mean, policy_loss
from urpo.sequences import MicroBatch, collate, padding_share, split_micro_batches
from urpo.shared_prefix import shared_prefix_support

if TYPE_CHECKING:
    from urpo.args import GRPOArgs, RolloutCorrectionArgs, SamplingArgs


@dataclass(frozen=True)
class Ranks:
    """This rank's device and the collectives the update needs, as plain functions (one process: identities)."""

    device: torch.device
    sum: Callable[[torch.Tensor], torch.Tensor] = lambda local: local
    """Element-wise sum of a tensor over all ranks."""
    max: Callable[[int], int] = lambda local: local
    """The largest of a number over all ranks."""
    world_size: int = 1


@dataclass
class UpdatePlan:
    """Micro-batches of this rank and the global counts the loss is normalised by."""

    batches: list[MicroBatch]
    """This rank's micro-batches, padded with zero-weight copies up to ``num_micro_batches``."""
    weights: list[float]
    """1.0 for real micro-batches, 0.0 for padding ones."""
    num_tokens: float
    """Completion tokens of the whole step, summed over ranks."""
    num_sequences: float
    """Completions trained on in the whole step, summed over ranks."""
    padding_frac: float = 0.0
    """Share of the token positions of the step's real micro-batches (all ranks) that are padding."""
    shared_prefix: bool = False
    """Each micro-batch runs its distinct prompts once (:mod:`urpo.shared_prefix`)."""

    @property
    def num_micro_batches(self) -> int:
        return len(self.batches)

    @classmethod
    def build(
        cls,
        sequences: Sequence[TrainSequence],
        *,
        max_tokens: int,
        pad_id: int,
        ranks: Ranks,
        counted: Sequence[TrainSequence] | None = None,
        engine_logprobs: bool = False,
        shared_prefix: bool = False,
    ) -> UpdatePlan:
        """Micro-batches of ``sequences`` under a budget of ``max_tokens`` padded tokens each; the loss is normalised
        by the counts of ``counted`` (default: the same), which may hold more sequences: ones left out of the
        forward/backward because their gradient is zero.

        With ``engine_logprobs`` (the engine reported them) the padding micro-batches carry zeros in their place.
        With ``shared_prefix`` the budget counts each distinct prompt of a micro-batch once."""
        groups = split_micro_batches(sequences, max_tokens, shared_prefix=shared_prefix)
        batches = [collate([sequences[i] for i in group], pad_id, ranks.device) for group in groups]
        counted = sequences if counted is None else counted
        real, positions = padding_share(batches, shared_prefix)
        local = [sum(len(s.completion_ids) for s in counted), len(counted), real, positions]
        local = torch.tensor(local, dtype=torch.float64, device=ranks.device)
        tokens, count, real, positions = ranks.sum(local).tolist()  # one collective for all four
        num_micro = ranks.max(len(groups))
        weights = [1.0] * len(batches)
        filler = batches[0] if batches else collate([_empty_sequence(pad_id)], pad_id, ranks.device)
        if engine_logprobs:
            filler = dataclasses.replace(filler, engine_logprobs=torch.zeros_like(filler.completion_mask))
        while len(batches) < num_micro:
            batches.append(filler)
            weights.append(0.0)
        padding = 1.0 - real / positions if positions else 0.0
        return cls(batches, weights, tokens, count, padding_frac=padding, shared_prefix=shared_prefix)

    def micro_batch(self, index: int) -> tuple[MicroBatch, float]:
        return self.batches[index], self.weights[index]

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, temperature: float, chunk_tokens: int | None) -> list[torch.Tensor]:
        """Token log-probs of every micro-batch under ``model`` (old policy or reference), ``[B, C]`` each."""
        return [self.scores(model, b, temperature, chunk_tokens).logprobs for b in self.batches]

    def scores(
        self, model: torch.nn.Module, batch: MicroBatch, temperature: float, chunk_tokens: int | None
    ) -> CompletionScores:
        """Log-probs and entropy of one of the plan's micro-batches, run the plan's way (shared prefix or not)."""
        return score_completions(model, batch, temperature, chunk_tokens, shared_prefix=self.shared_prefix)


def _empty_sequence(pad_id: int) -> TrainSequence:
    # A rank with nothing to train on still joins every collective; its padding batch has weight 0.
    return TrainSequence(prompt_ids=[pad_id], completion_ids=[pad_id], advantage=0.0, episode=-1, sample=-1)


def sequences_with_gradient(sequences: list[TrainSequence], grpo: GRPOArgs) -> list[TrainSequence]:
    """The sequences worth a forward/backward: see ``GRPOArgs.skip_zero_advantage``.

    Without a KL term every loss term of a completion is its advantage times a (clipped, maybe importance-
    weighted) ratio, so an advantage of exactly 0 gives an exactly zero gradient.
    """
    if not grpo.skip_zero_advantage or grpo.beta > 0:
        return sequences
    return [seq for seq in sequences if seq.advantage != 0.0]


@dataclass
class Updater:
    """The update loop of one step, given what it needs as values and functions.

    Args:
        policy: the model trained (its parameters get the gradients).
        grpo: the objective and update settings.
        correction: the train/inference mismatch correction (used when the sequences carry engine log-probs).
        sampling: the sampling settings (the temperature the logits are divided by, ``max_new_tokens``).
        pad_id: the tokenizer's padding id.
        ranks: this rank's device and collectives.
        backward: runs the backward pass of a loss (the module's ``manual_backward``: precision, strategy).
        optimizer_step: clips, steps and zeroes the gradients; returns the gradient norm.
        reference: opens the reference policy (for ``beta > 0``).
    """

    policy: torch.nn.Module
    grpo: GRPOArgs
    correction: RolloutCorrectionArgs
    sampling: SamplingArgs
    pad_id: int
    ranks: Ranks
    backward: Callable[[torch.Tensor], None]
    optimizer_step: Callable[[], float]
    reference: Callable[[], AbstractContextManager[torch.nn.Module]] | None = None

    def run(self, sequences: list[TrainSequence], engine_logprobs: bool = False) -> dict[str, float]:
        """``num_iterations`` optimizer steps over the rollout batch, each accumulated over micro-batches.

        ``engine_logprobs``: the engine reported log-probs for this rank's rollout (the sequences then carry them);
        a rank left with no sequence to train on still pads its micro-batches the same way.
        """
        grpo = self.grpo
        trained = sequences_with_gradient(sequences, grpo)
        with_engine = engine_logprobs or any(s.engine_logprobs is not None for s in sequences)
        plan = UpdatePlan.build(
            trained,
            max_tokens=grpo.max_tokens_per_micro_batch,
            pad_id=self.pad_id,
            ranks=self.ranks,
            counted=sequences,
            engine_logprobs=with_engine,
            shared_prefix=grpo.shared_prefix and _supports_shared_prefix(self.policy),
        )
        if plan.num_sequences == 0:
            return {keys.EMPTY_UPDATES: 1.0}  # every completion of the step lacked a reward, on every rank
        temperature, chunk = self.sampling.temperature, grpo.logits_chunk_tokens
        if with_engine and self.correction.old_logprobs == "engine":
            old_logps = [batch.engine_logprobs for batch in plan.batches]
        else:
            old_logps = plan.logprobs(self.policy, temperature, chunk) if grpo.num_iterations > 1 else None
        ref_logps = None
        if grpo.beta > 0:
            with self.reference() as reference:
                ref_logps = plan.logprobs(reference, temperature, chunk)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: padding micro-batches report no mismatch metrics
        for _ in range(grpo.num_iterations):
            for index in range(plan.num_micro_batches):
                stats = self.micro_step(plan, index, old_logps, ref_logps)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
            if plan.num_micro_batches == 0:
                zero_gradients(self.policy)  # nothing to backpropagate: step on exact zeros, as a full update would
            totals[keys.GRAD_NORM] = self.optimizer_step()
        metrics = {k: v / _divisor(k, counts.get(k, 1), grpo.num_iterations) for k, v in totals.items()}
        if plan.num_micro_batches == 0:  # every completion skipped: the loss was exactly zero (per-token stats: none)
            metrics.update({keys.LOSS: 0.0, keys.PG_LOSS: 0.0})
        metrics[keys.ZERO_ADVANTAGE_SKIPPED] = float(len(sequences) - len(trained))
        metrics[keys.PADDING_FRAC] = plan.padding_frac
        return metrics

    def micro_step(
        self, plan: UpdatePlan, index: int, old_logps: list[torch.Tensor] | None, ref_logps: list[torch.Tensor] | None
    ) -> dict[str, float]:
        """Forward and backward of one micro-batch; returns its statistics."""
        grpo, fix = self.grpo, self.correction
        batch, weight = plan.micro_batch(index)
        scores = plan.scores(self.policy, batch, self.sampling.temperature, grpo.logits_chunk_tokens)
        logp = scores.logprobs  # [B, C]
        old = old_logps[index] if old_logps is not None else logp.detach()  # [B, C]
        ref = ref_logps[index] if ref_logps is not None else None  # [B, C]
        engine = batch.engine_logprobs if weight > 0 else None  # [B, C]
        # Importance-weights the gradient for the engine's sampling and measures the mismatch; no-op without engine.
        loss_logp, mismatch = correct(
            logp,
            old,
            engine,
            batch.completion_mask,
            level=fix.level,
            mode=fix.mode,
            cap_max=fix.cap_max,
            cap_min=fix.cap_min,
            old_logprobs=fix.old_logprobs,
        )
        out = policy_loss(
            loss_logp,
            old,
            batch.advantages,
            batch.completion_mask,
            eps_low=grpo.epsilon_low,
            eps_high=grpo.epsilon_high,
            dual_clip=grpo.dual_clip,
            importance=grpo.importance,
            ref_logp=ref,
            beta=grpo.beta,
            kl_estimator=grpo.kl_estimator,
            aggregation=grpo.loss_aggregation,
            num_tokens=plan.num_tokens,
            num_sequences=plan.num_sequences,
            max_completion_length=self.sampling.max_new_tokens,
        )
        # DDP and FSDP average gradients over ranks; the loss is normalised by global counts, so undo the average.
        self.backward(out.loss * weight * self.ranks.world_size)
        stats = {
            keys.LOSS: out.loss.item() * weight,
            keys.PG_LOSS: out.pg_loss.item() * weight,
            keys.CLIP_LOW_FRAC: out.clip_low_frac.item(),
            keys.CLIP_HIGH_FRAC: out.clip_high_frac.item(),
            keys.DUAL_CLIP_FRAC: out.dual_clip_frac.item(),
            keys.RATIO_MEAN: out.ratio_mean.item(),
            keys.ENTROPY: masked_mean(scores.entropy, batch.completion_mask).item(),
        }
        if out.kl is not None:
            stats[keys.KL] = out.kl.item() * weight
        stats.update(mismatch)
        return stats


_WARNED: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _supports_shared_prefix(policy: torch.nn.Module) -> bool:
    """Whether the policy can run the shared-prefix update; when not, says why once per policy and reason."""
    reason = shared_prefix_support(policy)
    if reason is not None and _WARNED.get(policy) != reason:
        _WARNED[policy] = reason
        message = f"urpo: grpo.shared_prefix is on but the update runs every prompt per completion: {reason}"
        warnings.warn(message, stacklevel=3)
    return reason is None


_SUMMED = frozenset({keys.LOSS, keys.PG_LOSS, keys.KL})
"""Metrics that are micro-batches' contributions to the step's loss: their sum is the step's (this rank's) value."""


def _divisor(key: str, count: int, iterations: int) -> int:
    """What a metric's total over the micro-batches of all iterations is divided by: the number of optimizer steps
    for loss contributions (so the logged loss does not depend on the micro-batch split), else its count."""
    if key == keys.GRAD_NORM:  # the last optimizer step's
        return 1
    return iterations if key in _SUMMED else count


def zero_gradients(model: torch.nn.Module) -> None:
    """Give every trainable parameter a zero gradient, so the optimizer step (momentum, weight decay) runs as it
    would after a backward pass whose gradients were all zero."""
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)
