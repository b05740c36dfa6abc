"""The update loop (urpo.update): the engine's log-probs travel with their sequences into every micro-batch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.test_module import _attached_module, _sequences
from urpo.episode import TrainSequence
from urpo.sequences import collate, completion_logits, token_logprobs

SHIFT = 0.3
"""The engine's log-probs are the trainer's minus this, on every token."""


def _with_engine_logprobs(module, sequences: list[TrainSequence]) -> list[TrainSequence]:
    """Each sequence with the trainer's own log-probs of its tokens, lowered by SHIFT, as the engine's."""
    out = []
    with torch.no_grad():
        for seq in sequences:
            batch = collate([seq], module.tokenizer.pad_token_id, module.device)
            logp = token_logprobs(
                completion_logits(module.policy, batch, module.sampling.temperature), batch.completion_ids
            )
            out.append(dataclasses.replace(seq, engine_logprobs=[v - SHIFT for v in logp[0].tolist()]))
    return out


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5)


@pytest.mark.parametrize("budget", [10_000, 20, 1])
def test_engine_logprobs_stay_aligned_in_every_micro_batch_split(tiny_model_dir, budget):
    """Whatever the micro-batch split, every token is compared with the engine's log-prob of that very token: the
    measured mismatch is SHIFT everywhere, and truncated importance sampling scales the whole SGD step by
    exp(SHIFT) (the weight pi_old / pi_engine of every token, under the cap of 2)."""
    sequences = _sequences([(-1) ** i * 0.5 for i in range(8)])
    deltas, stats = [], None
    for engine in (False, True):
        module = _attached_module(tiny_model_dir, _sgd, max_tokens_per_micro_batch=budget)
        before = [p.detach().clone() for p in module.policy.parameters()]
        batch = _with_engine_logprobs(module, sequences) if engine else sequences
        result = module.update(batch)
        stats = result if engine else stats
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(module.policy.parameters(), before)]))
    assert stats["mismatch/logp_abs_diff"] == pytest.approx(SHIFT, abs=1e-4)
    assert stats["mismatch/logp_abs_diff_max"] == pytest.approx(SHIFT, abs=1e-4)
    assert stats["mismatch/is_weight_mean"] == pytest.approx(math.exp(SHIFT), rel=1e-4)
    plain, weighted = deltas
    assert plain.abs().max() > 0
    scale = plain.abs().max().item()  # float noise is relative to the step, not to each tiny element
    torch.testing.assert_close(weighted, plain * math.exp(SHIFT), rtol=1e-3, atol=1e-4 * scale)


def _update(model_dir: str, steps: list[list[TrainSequence]], **grpo) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """How the flattened weights moved over ``module.update`` on each step in turn, and each step's metrics."""
    module = _attached_module(model_dir, _sgd_momentum, **grpo)
    before = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
    stats = [module.update(step) for step in steps]
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()]) - before, stats


def _sgd_momentum(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def _assert_same_update(a, b, metrics=("train/loss", "train/pg_loss", "train/entropy", "train/kl")):
    """The same weight changes (to float noise relative to the largest change) and the same metrics."""
    (delta_a, stats_a), (delta_b, stats_b) = a, b
    scale = delta_a.abs().max().item()
    assert scale > 1e-3
    torch.testing.assert_close(delta_b, delta_a, rtol=1e-3, atol=1e-4 * scale)
    for step_a, step_b in zip(stats_a, stats_b):
        for key in metrics:
            if key in step_a:
                assert step_b[key] == pytest.approx(step_a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    "grpo",
    [{}, {"beta": 0.1, "num_iterations": 2, "max_tokens_per_micro_batch": 30}],
    ids=["plain", "kl-reference-old-logprobs-micro-batches"],
)
def test_logits_in_chunks_do_not_change_the_update(tiny_model_dir, grpo):
    """The whole update (reference and old-log-prob forwards included) is the same with logits in chunks of 3
    tokens (which divide no micro-batch evenly) as with whole logits; only memory differs."""
    steps = [_sequences([(-1) ** i * 0.5 * (1 + i % 3) for i in range(8)]) for _ in range(2)]
    whole = _update(tiny_model_dir, steps, logits_chunk_tokens=None, **grpo)
    chunked = _update(tiny_model_dir, steps, logits_chunk_tokens=3, **grpo)
    _assert_same_update(whole, chunked)


def test_micro_batches_by_length_do_not_change_the_update_and_report_their_padding(tiny_model_dir):
    """Micro-batches of sequences of similar lengths (a new order) give the update of one whole batch; the padded
    share of the positions run is reported, smaller when the split lets lengths be grouped."""
    steps = [_sequences([(-1) ** i * 0.5 * (1 + i % 3) for i in range(8)])]  # prompts of 1-3, completions of 2-9
    whole = _update(tiny_model_dir, steps, max_tokens_per_micro_batch=10_000, shared_prefix=False)
    split = _update(tiny_model_dir, steps, max_tokens_per_micro_batch=30, shared_prefix=False)
    _assert_same_update(whole, split, ("train/loss", "train/pg_loss"))  # entropy: a mean of micro-batch means
    assert whole[1][0]["train/padding_frac"] == pytest.approx(1 - (15 + 44) / (8 * (3 + 9)))
    assert split[1][0]["train/padding_frac"] < whole[1][0]["train/padding_frac"] - 0.1
