"""The HF-generate rollout engine on the tiny model: shapes, EOS handling, chunking, rank-aligned calls, and the
shared prefill (each distinct prompt computed once) against the plain path."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from urpo.args import ModelArgs, SamplingArgs
from urpo.engines.base import RolloutEngine
from urpo.engines.hf_engine import HFGenerateEngine, _trim_completion, complete, generate_ids, left_pad
from urpo.errors import ConfigError
from urpo.models import load_model, load_tokenizer
from urpo.prompts import render_chat


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    args = ModelArgs(name_or_path=tiny_model_dir)
    model, tokenizer = load_model(args), load_tokenizer(args)
    return HFGenerateEngine(lambda: model, tokenizer)


def prompts(engine, n: int) -> list[str]:
    return [render_chat(engine.tokenizer, [{"role": "user", "content": f"What is {i} + 2?"}]) for i in range(n)]


def test_generate_returns_n_completions_per_prompt_in_prompt_major_order(engine):
    torch.manual_seed(0)
    out = engine.generate(prompts(engine, 3), 4, SamplingArgs(max_new_tokens=8))
    assert isinstance(engine, RolloutEngine)
    assert len(out.prompt_ids) == 3 and len(out.completion_ids) == 12 == len(out.texts) == len(out.finish_reasons)
    assert out.samples_per_prompt == 4
    eos = engine.tokenizer.eos_token_id
    for ids, reason in zip(out.completion_ids, out.finish_reasons):
        assert 1 <= len(ids) <= 8
        assert (reason == "stop") == (ids[-1] == eos)
        assert eos not in ids[:-1]
    assert out.logprobs is None


def test_chunks_give_the_same_shapes(engine):
    out = engine.generate(prompts(engine, 3), 2, SamplingArgs(max_new_tokens=4, max_batch_size=4))
    assert len(out.completion_ids) == 6


@pytest.mark.parametrize(("synced", "expected"), [(False, [2, 2]), (True, [2, 2, 1, 1, 1])])
def test_a_rank_with_fewer_chunks_runs_padding_calls(engine, synced, expected):
    """Under sharding every rank makes as many generate calls as the busiest rank (here: 5)."""
    calls = []
    ranked = HFGenerateEngine(engine._model, engine.tokenizer, synced_gpus=synced, max_over_ranks=lambda n: 5)
    ranked._generate_chunk = lambda chunk, sampling: calls.append(len(chunk)) or [[1]] * len(chunk)
    ranked.generate(prompts(ranked, 2), 2, SamplingArgs(max_new_tokens=2, max_batch_size=2))
    assert calls == expected


def test_greedy_generation_is_one_call_that_stops_at_any_eos_and_restores_the_mode(engine, tiny_model_dir):
    """``complete`` (eval-referee, the evidence tools) decodes what ``generate_ids`` (the engine's call) returns."""
    model, tokenizer = load_model(ModelArgs(name_or_path=tiny_model_dir)), engine.tokenizer
    texts = prompts(engine, 5)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    model.train()
    greedy = generate_ids(model, tokenizer, ids, max_new_tokens=6)
    assert model.training  # generation ran in eval mode and gave the mode back
    assert greedy == generate_ids(model, tokenizer, ids, max_new_tokens=6)  # greedy: no randomness
    assert complete(model, tokenizer, texts, 6) == tokenizer.batch_decode(greedy, skip_special_tokens=True)
    # A generation-config EOS ends a completion too: make each row's first greedy token one.
    model.generation_config.eos_token_id = sorted({row[0] for row in greedy})
    stopped = generate_ids(model, tokenizer, ids, max_new_tokens=6)
    assert stopped == [row[:1] for row in greedy]


def test_trim_keeps_the_first_eos_and_drops_the_rest():
    assert _trim_completion([5, 6, 9, 0, 0], eos_ids=[9]) == [5, 6, 9]
    assert _trim_completion([5, 6, 7], eos_ids=[9]) == [5, 6, 7]


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = left_pad([[4]], pad_id=0, device=torch.device("cpu"), min_width=2)
    assert ids.tolist() == [[0, 4]] and mask.tolist() == [[0, 1]]


@pytest.fixture
def fresh_model(tiny_model_dir):
    return load_model(ModelArgs(name_or_path=tiny_model_dir))


def grouped_ids(engine, n: int) -> list[list[int]]:
    """Three chat prompts of different lengths and a one-token prompt, each repeated n times (prompt-major)."""
    ids = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts(engine, 3)]
    ids[1] = ids[1] + ids[2]  # unequal lengths: left padding inside the shared prefill
    return [row for row in [*ids, [5]] for _ in range(n)]


@pytest.mark.parametrize("temperature", [None, 1.0, 0.7])
def test_shared_prefill_samples_the_same_tokens_as_the_plain_path(engine, fresh_model, temperature):
    """Each distinct prompt is computed once and its cache copied per sample; generate's sampling loop is unchanged
    (same batch, same draws from the same generator), so the same seed gives the same tokens."""
    flat = grouped_ids(engine, 4)
    runs = {}
    for shared in (False, True):
        torch.manual_seed(11)
        runs[shared] = generate_ids(
            fresh_model, engine.tokenizer, flat, 10, temperature=temperature, shared_prefill=shared
        )
    assert runs[True] == runs[False]
    assert len({tuple(row) for row in runs[True]}) > (4 if temperature else 1)  # not one constant answer


def test_shared_prefill_through_lora_adapters(engine, fresh_model):
    """A peft-wrapped policy (LoRA) takes the shared path too, and samples what the plain path samples."""
    from urpo.args import LoraArgs
    from urpo.lora import apply_lora

    model = apply_lora(fresh_model, LoraArgs(r=4, init_lora_weights=False))  # random A and B: the adapters act
    flat = grouped_ids(engine, 3)
    runs = []
    for shared in (False, True):
        torch.manual_seed(4)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="urpo")
            runs.append(generate_ids(model, engine.tokenizer, flat, 8, temperature=1.0, shared_prefill=shared))
    assert runs[0] == runs[1]


def test_one_token_prompts_are_padded_to_a_cacheable_width(engine, fresh_model):
    """The shared cache covers all but the last prompt token, so a batch of one-token prompts gets one masked pad
    (a rank's padding call under synced_gpus sends such a prompt)."""
    for ids in ([[5], [5]], [[engine.tokenizer.pad_token_id]], [[5], [7]]):
        plain = generate_ids(fresh_model, engine.tokenizer, ids, 5)
        assert generate_ids(fresh_model, engine.tokenizer, ids, 5, shared_prefill=True) == plain


def test_shared_prefill_gives_the_engine_the_same_batches_chunks_stops_and_lengths(engine, fresh_model):
    """Through the engine: chunks that split a group, finish reasons, prompt ids, and the checkpoint's length floor
    (``min_new_tokens`` in its generation_config, as tools/bench_trl.py sets it) behave as on the plain path."""
    plain_engine = HFGenerateEngine(lambda: fresh_model, engine.tokenizer)
    texts = prompts(engine, 3)
    for sampling in (SamplingArgs(max_new_tokens=9, max_batch_size=5), SamplingArgs(max_new_tokens=9)):
        outs = []
        for shared in (False, True):
            torch.manual_seed(5)
            outs.append(plain_engine.generate(texts, 4, dataclasses.replace(sampling, shared_prefill=shared)))
        assert outs[0] == outs[1]
    fresh_model.generation_config.min_new_tokens = 9
    torch.manual_seed(5)
    floored = plain_engine.generate(texts, 4, SamplingArgs(max_new_tokens=9))
    assert [len(ids) for ids in floored.completion_ids] == [9] * 12
    assert all(engine.tokenizer.eos_token_id not in ids[:-1] for ids in floored.completion_ids)


def test_the_checkpoint_sampling_defaults_do_not_change_what_is_sampled(engine, fresh_model):
    """A generation_config may carry top_k, a repetition penalty, n-gram bans: the trainer's log-probs assume the
    temperature-scaled distribution with SamplingArgs' truncation only, so urpo switches those off."""
    flat = grouped_ids(engine, 3)
    torch.manual_seed(2)
    clean = generate_ids(fresh_model, engine.tokenizer, flat, 8, temperature=1.0, shared_prefill=True)
    config = fresh_model.generation_config
    config.top_k, config.repetition_penalty, config.no_repeat_ngram_size, config.min_p = 1, 50.0, 1, 0.5
    torch.manual_seed(2)
    assert generate_ids(fresh_model, engine.tokenizer, flat, 8, temperature=1.0, shared_prefill=True) == clean


def test_a_model_that_cannot_share_its_cache_falls_back_with_a_warning(engine, fresh_model):
    flat = grouped_ids(engine, 2)
    plain = generate_ids(fresh_model, engine.tokenizer, flat, 6)
    fresh_model.generation_config.cache_implementation = "static"
    with pytest.warns(UserWarning, match="shared prefill is off.*cache_implementation='static'"):
        fallback = generate_ids(fresh_model, engine.tokenizer, flat, 6, shared_prefill=True)
    assert fallback == plain


def test_shared_prefill_is_silent_where_it_applies(engine, fresh_model):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="urpo")
        generate_ids(fresh_model, engine.tokenizer, grouped_ids(engine, 2), 3, shared_prefill=True)


def test_sampling_args_are_validated():
    for bad in ({"max_new_tokens": 0}, {"temperature": 0.0}, {"top_p": 0.0}):
        with pytest.raises(ConfigError):
            SamplingArgs(**bad)


# ---- grouped-query attention on CPU without the KV copy ------------------------------------------------------------


@pytest.fixture(scope="module")
def grouped_query_model(tiny_model_dir):
    """The tiny model's architecture with 4 query heads sharing 1 KV head (random weights, seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 1, 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model, load_tokenizer(ModelArgs(name_or_path=tiny_model_dir))


def test_grouped_query_sdpa_equals_transformers_sdpa_under_a_padding_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from urpo.attention import grouped_query_sdpa

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    torch.manual_seed(0)
    query, key, value = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 10, 8), torch.randn(4, 2, 10, 8)
    mask = torch.ones(4, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., :7] = False  # left padding of different widths
    mask[3, ..., :2] = False
    ours, _ = grouped_query_sdpa(module, query, key, value, mask, scaling=0.3)
    stock, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(ours, stock)
    assert ours.shape == (4, 1, 6, 8)


@pytest.mark.parametrize("shared_prefill", [False, True])
def test_grouped_query_generation_samples_the_same_tokens(grouped_query_model, monkeypatch, shared_prefill):
    import contextlib

    import urpo.engines.hf_engine as hf_engine
    from urpo.attention import GQA_SDPA

    model, tokenizer = grouped_query_model
    ids = [tokenizer(("long prompt " * 12 if i % 3 == 0 else "") + f"What is {i} + 2?")["input_ids"] for i in range(6)]
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))

    def sample():
        torch.manual_seed(1)
        return generate_ids(model, tokenizer, ids, 6, temperature=1.0, shared_prefill=shared_prefill)

    ours = sample()
    assert set(seen) == {GQA_SDPA} and model.config._attn_implementation == "sdpa"  # used while generating, restored
    monkeypatch.setattr(hf_engine, "cpu_grouped_query_attention", lambda m: contextlib.nullcontext())
    assert sample() == ours


def test_grouped_query_attention_leaves_other_implementations_alone(grouped_query_model):
    from urpo.attention import cpu_grouped_query_attention

    model, _ = grouped_query_model
    model.config._attn_implementation = "eager"
    try:
        with cpu_grouped_query_attention(model):
            assert model.config._attn_implementation == "eager"
    finally:
        model.config._attn_implementation = "sdpa"
    with pytest.raises(RuntimeError), cpu_grouped_query_attention(model):  # restored after an error too
        raise RuntimeError
    assert model.config._attn_implementation == "sdpa"
