"""The plan of one update: micro-batches under a token budget, with counts agreed on by every rank.

Every rank must run the same number of forward/backward passes (FSDP gathers parameters collectively in each), and
the loss must be normalised by the counts of the whole step across ranks. The plan settles both before the first
micro-batch: ranks with fewer micro-batches run padding micro-batches whose loss is multiplied by zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from urpo.objective import entropy_from_logits, masked_mean
from urpo.episode import TrainSequence
from urpo.sequences import MicroBatch, collate, completion_logits, split_micro_batches, token_logprobs

if TYPE_CHECKING:
    from urpo.module import URPOModule


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

    @property
    def num_micro_batches(self) -> int:
        return len(self.batches)

    @classmethod
    def build(
        cls, module: URPOModule, sequences: Sequence[TrainSequence], counted: Sequence[TrainSequence] | None = None,
        engine_logprobs: bool = False,
    ) -> UpdatePlan:  # fmt: skip
        """Micro-batches of ``sequences``; the loss is normalised by the counts of ``counted`` (default: the same),
        which may hold more sequences: ones left out of the forward/backward because their gradient is zero.

        With ``engine_logprobs`` (the engine reported them) the padding micro-batches carry zeros in their place."""
        groups = split_micro_batches(sequences, module.grpo.max_tokens_per_micro_batch)
        counted = sequences if counted is None else counted
        local = torch.tensor(
            [sum(len(s.completion_ids) for s in counted), len(counted)], dtype=torch.float64, device=module.device
        )
        tokens, count = module.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        num_micro = int(module.all_gather(torch.tensor(len(groups), device=module.device)).max().item())
        pad_id = module.tokenizer.pad_token_id
        batches = [collate([sequences[i] for i in group], pad_id, module.device) for group in groups]
        weights = [1.0] * len(batches)
        filler = batches[0] if batches else collate([_empty_sequence(pad_id)], pad_id, module.device)
        if engine_logprobs:
            filler = dataclasses.replace(filler, engine_logprobs=torch.zeros_like(filler.completion_mask))
        while len(batches) < num_micro:
            batches.append(filler)
            weights.append(0.0)
        return cls(batches, weights, tokens, count)

    def micro_batch(self, index: int) -> tuple[MicroBatch, float]:
        return self.batches[index], self.weights[index]

    @torch.no_grad()
    def logprobs(self, module: URPOModule, model: torch.nn.Module) -> list[torch.Tensor]:
        """Token log-probs of every micro-batch under ``model`` (old policy or reference), ``[B, C]`` each."""
        temperature = module.sampling.temperature
        return [token_logprobs(completion_logits(model, b, temperature), b.completion_ids) for b in self.batches]


def _empty_sequence(pad_id: int) -> TrainSequence:
    # A rank with nothing to train on still joins every collective; its padding batch has weight 0.
    return TrainSequence(prompt_ids=[pad_id], completion_ids=[pad_id], advantage=0.0, episode=-1, sample=-1)


@torch.no_grad()
def entropy_of(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean entropy (nats) of the policy over completion tokens."""
    return masked_mean(entropy_from_logits(logits.detach()), mask).item()
