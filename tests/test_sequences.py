"""Packing sequences into micro-batches: the engine's log-probs are padded exactly like the completions."""

from __future__ import annotations

import pytest
import torch

from urpo.episode import TrainSequence
from urpo.sequences import collate


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
