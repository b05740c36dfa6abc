"""The shared-prefix update (urpo.shared_prefix): each distinct prompt runs once, and the log-probs, gradients and
whole updates are those of running every prompt + completion, on tiny models (full fine-tuning and LoRA)."""

from __future__ import annotations

import pytest
import torch

from tests.test_logprobs import _model
from tests.test_update import _assert_same_update, _update
from urpo.args import LoraArgs
from urpo.episode import TrainSequence
from urpo.logprobs import score_completions
from urpo.sequences import collate, padding_share, split_micro_batches
from urpo.shared_prefix import copying_rows, gather_rows, shared_prefix_support


def _groups(sizes: list[tuple[int, list[int]]], vocab: int, seed: int = 0) -> list[TrainSequence]:
    """Groups of sequences sharing a prompt: ``(prompt length, [completion lengths])`` per group, random tokens."""
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for episode, (prompt_len, completions) in enumerate(sizes):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=generator).tolist()
        for sample, length in enumerate(completions):
            completion = torch.randint(3, vocab, (length,), generator=generator).tolist()
            advantage = float(torch.randn((), generator=generator))
            sequences.append(TrainSequence(prompt, completion, advantage, episode, sample))
    return sequences


RAGGED = [(7, [3, 9, 1, 5]), (12, [6, 2, 8]), (4, [10])]
"""Three prompts of different lengths, groups of 4, 3 and 1 completions of ragged lengths."""
UNPADDED = [(6, [5, 5, 5])]
"""One prompt, three completions of one length: no padding anywhere (attention without a padding mask)."""


def _scores_and_grads(model, batch, chunk, shared):
    model.zero_grad()
    scores = score_completions(model, batch, 0.8, chunk, shared_prefix=shared)
    mask = batch.completion_mask
    weights = torch.linspace(-1.0, 2.0, mask.numel()).reshape(mask.shape)  # every token weighted differently
    (scores.logprobs * weights * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return scores, grads


@pytest.mark.parametrize("layout", [RAGGED, UNPADDED], ids=["ragged", "unpadded"])
@pytest.mark.parametrize("chunk", [None, 3], ids=["whole-logits", "chunks"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_prefix_gives_the_log_probs_and_gradients_of_the_plain_forward(tiny_model_dir, layout, chunk, lora):
    model = _model(tiny_model_dir, lora)
    assert shared_prefix_support(model) is None
    batch = collate(_groups(layout, model.config.vocab_size), pad_id=0, device=torch.device("cpu"))
    assert len(batch.prompt_rows) == len(layout) and batch.prompt_index.tolist() == [
        group for group, (_, completions) in enumerate(layout) for _ in completions
    ]
    mask = batch.completion_mask.bool()
    plain, plain_grads = _scores_and_grads(model, batch, chunk, shared=False)
    shared, shared_grads = _scores_and_grads(model, batch, chunk, shared=True)
    torch.testing.assert_close(shared.logprobs[mask], plain.logprobs[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.entropy[mask], plain.entropy[mask], rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():  # float noise is relative to the gradient's size
        scale = grad.abs().max().item()
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def _steps(vocab: int) -> list[list[TrainSequence]]:
    return [_groups(RAGGED + [(9, [4, 4, 7, 2])], vocab, seed) for seed in range(2)]


@pytest.mark.parametrize(
    "grpo",
    [
        {},
        {"beta": 0.1, "num_iterations": 2, "max_tokens_per_micro_batch": 40},
        {"loss_aggregation": "seq_mean", "max_tokens_per_micro_batch": 25, "logits_chunk_tokens": None},
    ],
    ids=["plain", "kl-reference-old-logprobs-micro-batches", "seq-mean-small-budget-whole-logits"],
)
def test_shared_prefix_does_not_change_the_update(tiny_model_dir, grpo):
    """Two steps of SGD with momentum, with the reference (beta > 0) and old-policy (num_iterations = 2) forwards and
    budgets small enough to split groups over micro-batches: the same weights and metrics with or without sharing."""
    steps = _steps(vocab=400)
    plain = _update(tiny_model_dir, steps, shared_prefix=False, **grpo)
    shared = _update(tiny_model_dir, steps, shared_prefix=True, **grpo)
    _assert_same_update(plain, shared, ("train/loss", "train/pg_loss", "train/kl"))


def test_shared_prefix_does_not_change_a_lora_update_with_the_base_as_reference(tiny_model_dir):
    steps = _steps(vocab=400)
    lora = LoraArgs(r=4, init_lora_weights="gaussian")
    plain = _update(tiny_model_dir, steps, lora=lora, shared_prefix=False, beta=0.1, num_iterations=2)
    shared = _update(tiny_model_dir, steps, lora=lora, shared_prefix=True, beta=0.1, num_iterations=2)
    _assert_same_update(plain, shared, ("train/loss", "train/pg_loss", "train/kl"))


def test_shared_micro_batches_keep_a_prompt_together_and_count_it_once():
    sequences = _groups(RAGGED + [(9, [4, 4, 7, 2])], vocab=400)
    shuffled = [sequences[i] for i in torch.randperm(len(sequences), generator=torch.Generator().manual_seed(1))]
    groups = split_micro_batches(shuffled, max_tokens=10_000, shared_prefix=True)
    assert len(groups) == 1
    # prompts in order of length (4, 7, 9, 12 tokens): each prompt's completions together, shortest first
    assert [shuffled[i].episode for i in groups[0]] == [2] + [0] * 4 + [3] * 4 + [1] * 3
    batch = collate([shuffled[i] for i in groups[0]], 0, torch.device("cpu"))
    real, positions = padding_share([batch], shared_prefix=True)
    assert real == (7 + 12 + 4 + 9) + sum(len(s.completion_ids) for s in sequences)  # each prompt counted once
    assert positions == 4 * 12 + 12 * 10
    small = split_micro_batches(shuffled, max_tokens=40, shared_prefix=True)
    for group in small:
        size = collate([shuffled[i] for i in group], 0, torch.device("cpu"))
        assert len(group) == 1 or padding_share([size], shared_prefix=True)[1] <= 40


def test_models_that_cannot_share_a_prefix_say_why(tiny_model_dir):
    model = _model(tiny_model_dir, lora=False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "activation checkpointing" in shared_prefix_support(model.train())
    assert shared_prefix_support(model.eval()) is None  # no-grad forwards keep their cache
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=0,
    )  # fmt: skip
    assert "full attention" in shared_prefix_support(Qwen2ForCausalLM(config))
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, attn_implementation="flex_attention",
    )  # fmt: skip
    assert "flex_attention" in shared_prefix_support(Qwen2ForCausalLM(config))


def test_an_update_that_cannot_share_warns_once_and_runs_plain(tiny_model_dir):
    import warnings

    from tests.test_module import _attached_module
    from tests.test_update import _sgd_momentum

    module = _attached_module(tiny_model_dir, _sgd_momentum, shared_prefix=True)
    module.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module.policy.train()
    steps = _steps(vocab=400)
    with pytest.warns(UserWarning, match="shared_prefix is on but .* activation checkpointing"):
        first = module.update(steps[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.update(steps[1])
    assert not [w for w in caught if "shared_prefix" in str(w.message)]  # said once
    groups = split_micro_batches(steps[0], module.grpo.max_tokens_per_micro_batch)
    real, positions = padding_share([collate([steps[0][i] for i in g], 0, torch.device("cpu")) for g in groups])
    assert first["train/padding_frac"] == pytest.approx(1 - real / positions)  # the plain layout ran


@pytest.mark.parametrize("order", ["grouped", "interleaved"])
def test_gather_rows_sums_a_prompts_rows_in_the_same_order_every_time(order):
    """The backward of ``x[index]`` adds a prompt's rows with racing atomic adds on CPU once the tensor is large
    (from 2 threads; half of such backwards differed in the last bits here), which made a resumed run end with
    other weights than the straight run. ``gather_rows`` gives indexing's values, and the same bits every time."""
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(3).repeat_interleave(4)  # prompt 1's rows fall on both sides of a 2-thread split
    if order == "interleaved":
        index = torch.arange(3).repeat(4)
    shape = (4, 200, 64)  # 614k elements gathered: the backward's threads overlap long enough to race
    source = torch.randn(3, *shape, generator=generator, requires_grad=True)
    weights = torch.randn(len(index), *shape, generator=generator)
    copies = copying_rows(index, 3)

    def gradient(gather) -> torch.Tensor:
        source.grad = None
        (gather() * weights).sum().backward()
        return source.grad.clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(gather_rows(source, index, copies), source[index])
        first = gradient(lambda: gather_rows(source, index, copies))
        torch.testing.assert_close(first, gradient(lambda: source[index]))
        for _ in range(30):
            assert torch.equal(gradient(lambda: gather_rows(source, index, copies)), first)
    finally:
        torch.set_num_threads(threads)
