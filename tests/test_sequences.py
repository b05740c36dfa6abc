"""Packing sequences into micro-batches: the engine's log-probs are padded exactly like the completions."""

from __future__ import annotations

import pytest
import torch

from urpo.episode import TrainSequence
from urpo.sequences import collate, padding_share, split_micro_batches


def test_collate_pads_engine_logprobs_like_the_completions():
    sequences = [
        TrainSequence([5, 6], [10, 11, 12], 1.0, 0, 0, engine_logprobs=[-0.1, -0.2, -0.3]),
        TrainSequence([5], [13], -1.0, 0, 1, engine_logprobs=[-0.4]),
    ]
    batch = collate(sequences, pad_id=0, device=torch.device("cpu"))
    assert batch.engine_logprobs.dtype == torch.float32
    assert batch.engine_logprobs.shape == batch.completion_ids.shape == (2, 3)
    torch.testing.assert_close(batch.engine_logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0]]))
    assert torch.equal(batch.completion_mask, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))


def test_collate_without_engine_logprobs_has_none_and_refuses_a_mix():
    plain = [TrainSequence([5], [10, 11], 1.0, 0, 0), TrainSequence([5], [12], 0.0, 0, 1)]
    assert collate(plain, pad_id=0, device=torch.device("cpu")).engine_logprobs is None
    mixed = [plain[0], TrainSequence([5], [12], 0.0, 0, 1, engine_logprobs=[-1.0])]
    with pytest.raises(RuntimeError, match="mixes"):
        collate(mixed, pad_id=0, device=torch.device("cpu"))


def test_engine_logprobs_must_cover_the_completion():
    with pytest.raises(RuntimeError, match="cover 1 tokens of a 2-token completion"):
        TrainSequence([5], [10, 11], 1.0, 0, 0, engine_logprobs=[-1.0])


def _seq(prompt: int, completion: int, index: int = 0) -> TrainSequence:
    return TrainSequence([5] * prompt, [10] * completion, 1.0, index, 0)


def test_micro_batches_take_sequences_by_length_within_the_budget():
    lengths = [(3, 40), (3, 2), (9, 35), (9, 3), (3, 38), (9, 1), (3, 4), (9, 36)]  # long and short interleaved
    sequences = [_seq(p, c, i) for i, (p, c) in enumerate(lengths)]
    groups = split_micro_batches(sequences, max_tokens=100)
    assert sorted(i for group in groups for i in group) == list(range(len(sequences)))  # each once
    assert groups == split_micro_batches(list(sequences), max_tokens=100)  # deterministic
    batches = [collate([sequences[i] for i in group], 0, torch.device("cpu")) for group in groups]
    assert all(b.input_ids.numel() <= 100 for b in batches)  # the budget counts prompt + completion widths
    assert groups == [[1, 6, 5, 3], [4, 0], [2, 7]]  # shortest first: the four short ones share one batch
    real, positions = padding_share(batches)
    assert real == sum(p + c for p, c in lengths)
    # The same budget on the sequences in their given order pads far more: (9 + 40) x 2 for the first pair alone.
    in_order = [collate(sequences[i : i + 2], 0, torch.device("cpu")) for i in range(0, 8, 2)]
    assert padding_share(in_order)[1] - real > 3 * (positions - real)


def test_a_sequence_over_the_budget_gets_a_micro_batch_of_its_own():
    sequences = [_seq(2, 2), _seq(50, 50), _seq(2, 3)]
    assert split_micro_batches(sequences, max_tokens=20) == [[0, 2], [1]]
    assert split_micro_batches(sequences, max_tokens=20, max_sequences=1) == [[0], [2], [1]]
