"""The default rollout engine: ``transformers``' ``generate`` on the module's own (possibly sharded) policy.

:class:`HFGenerateEngine` samples from the live policy, so it never holds a stale copy of the weights and works under
FSDP2; :func:`generate_ids` is its one ``model.generate`` call, which :func:`complete` (greedy or sampled texts for
``urpo eval-referee`` and the evidence tools) reuses.

Shared prefill: when a call samples the same prompt several times (a group's G completions, a preference row's G
judgments of one long referee prompt), the engine runs each distinct prompt through the model once and hands
``generate`` copies of that prompt's KV cache, so the prompt is computed once instead of G times. Sampling itself is
HF's own loop, unchanged: the same batch, the same logits processors, the same random draws, hence the same tokens
under the same seed up to float rounding (tests/engines/test_hf_engine.py).
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

import torch

from urpo.args import SamplingArgs
from urpo.attention import cpu_grouped_query_attention
from urpo.engines.base import FinishReason, RolloutBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFGenerateEngine:
    """Samples with ``model.generate`` on the policy itself, so there is never a stale copy of the weights.

    Args:
        model: returns the policy to sample from (a callable, so that wrappers such as FSDP or LoRA added after the
            engine was built are used).
        tokenizer: the policy's tokenizer; prompts are tokenized without extra special tokens, since the chat
            template already placed them.
        synced_gpus: keep every rank generating until all ranks are done. Required when parameters are sharded
            (FSDP), where ranks that stop early would otherwise leave the others waiting in a collective forever.
        max_over_ranks: with ``synced_gpus``, returns the largest of a number over all ranks; used so that every
            rank runs as many ``generate`` calls as the busiest one (a rank with fewer chunks runs padding calls).
    """

    def __init__(
        self,
        model: Callable[[], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        synced_gpus: Callable[[], bool] | bool = False,
        max_over_ranks: Callable[[int], int] | None = None,
    ) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self._synced_gpus = synced_gpus
        self._max_over_ranks = max_over_ranks

    @property
    def synced_gpus(self) -> bool:
        return self._synced_gpus() if callable(self._synced_gpus) else self._synced_gpus

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the live policy."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        flat = [ids for ids in prompt_ids for _ in range(n)]
        size = sampling.max_batch_size or len(flat) or 1
        chunks = [flat[start : start + size] for start in range(0, len(flat), size)]
        completions: list[list[int]] = []
        for chunk in chunks:
            completions.extend(self._generate_chunk(chunk, sampling))
        for _ in range(self._calls_needed(len(chunks)) - len(chunks)):
            self._generate_chunk([[self.tokenizer.pad_token_id]], sampling)  # padding call: joins the collectives
        eos = set(_eos_ids(self.tokenizer, self._model()))
        reasons: list[FinishReason] = ["stop" if ids and ids[-1] in eos else "length" for ids in completions]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return RolloutBatch(prompt_ids=prompt_ids, completion_ids=completions, texts=texts, finish_reasons=reasons)

    def _calls_needed(self, local_calls: int) -> int:
        if not self.synced_gpus or self._max_over_ranks is None:
            return local_calls
        return self._max_over_ranks(local_calls)

    def _generate_chunk(self, prompt_ids: list[list[int]], sampling: SamplingArgs) -> list[list[int]]:
        return generate_ids(
            self._model(),
            self.tokenizer,
            prompt_ids,
            sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            synced_gpus=self.synced_gpus,
            shared_prefill=sampling.shared_prefill,
        )


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float | None = None,
    top_p: float = 1.0,
    top_k: int | None = None,
    synced_gpus: bool = False,
    shared_prefill: bool = False,
) -> list[list[int]]:
    """The one ``model.generate`` call every urpo path uses: the rollout engine, ``urpo eval-referee`` and the
    evidence tools.

    Greedy when ``temperature`` is None (or 0), else sampled at that temperature from the ``top_p`` / ``top_k``
    (None: unlimited) truncated distribution, and from nothing else: the checkpoint's own sampling defaults
    (``generation_config``'s top_k of 50, repetition penalty, min_p, ...) are switched off, because the trainer's
    log-probs assume exactly this distribution. The checkpoint's EOS ids and length floor (``min_new_tokens``) still
    apply. Prompts are left-padded into one batch; the model runs in eval mode (its train/eval mode is restored
    after). Each row is cut after its first EOS, which is kept. ``shared_prefill`` computes each distinct prompt once
    (module docstring); models that cannot share a cache fall back to the plain call with a warning.
    """
    unsupported = shared_prefill and shared_prefill_unsupported(model)
    if unsupported:
        warnings.warn(f"urpo: shared prefill is off, each prompt is prefilled per sample: {unsupported}", stacklevel=2)
    shared = shared_prefill and not unsupported
    # The shared cache holds all but each row's last prompt token: a width of 2 at least (one-token prompts get a pad).
    width = 2 if shared else 1
    input_ids, attention_mask = left_pad(prompt_ids, tokenizer.pad_token_id, _device_of(model), min_width=width)
    eos_ids = _eos_ids(tokenizer, model)
    settings = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos_ids,
        "synced_gpus": synced_gpus,
        **decoding_settings(temperature, top_p, top_k),
    }
    was_training = model.training
    # eval() turns off dropout and lets the KV cache work when gradient checkpointing is on.
    model.eval()
    try:
        with cpu_grouped_query_attention(model):  # padded batches on CPU: no copy of the KV cache per head
            if shared:
                settings[_cache_keyword(model)] = _prefill_once(model, prompt_ids, input_ids, attention_mask)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)  # [B, P + T]
    finally:
        model.train(was_training)
    new_tokens = out[:, input_ids.shape[1] :].tolist()  # [B, T]
    return [_trim_completion(ids, eos_ids) for ids in new_tokens]


def decoding_settings(temperature: float | None, top_p: float = 1.0, top_k: int | None = None) -> dict[str, Any]:
    """``generate`` keywords for greedy decoding (``temperature`` None or 0) or for sampling from the temperature-
    scaled distribution truncated by ``top_p`` / ``top_k`` only.

    Every other logits processor a checkpoint's ``generation_config`` may switch on is set to its neutral value, so
    that what is sampled is what the trainer's log-probs describe. With top-p 1 and no top-k, HF's sampler neither
    sorts nor ranks the vocabulary: it scales by the temperature, takes a softmax and draws one token per row (for
    one sample ``torch.multinomial`` uses the exponential-race trick, no cumulative sum).
    """
    neutral: dict[str, Any] = {
        "repetition_penalty": 1.0,
        "encoder_repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "encoder_no_repeat_ngram_size": 0,
        "bad_words_ids": None,
        "sequence_bias": None,
        "suppress_tokens": None,
        "begin_suppress_tokens": None,
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,
        "exponential_decay_length_penalty": None,
        "guidance_scale": None,
        "watermarking_config": None,
        "renormalize_logits": False,
        "num_beams": 1,
        "num_return_sequences": 1,
    }
    if temperature:
        truncation = {"min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None}
        decoding = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k or 0, **truncation}
    else:
        decoding = {"do_sample": False}
    known = _generation_config_keys()
    return {key: value for key, value in {**neutral, **decoding}.items() if key in known}  # keys of this version


def shared_prefill_unsupported(model: PreTrainedModel) -> str | None:
    """Why the prompt cache of ``model`` cannot be computed once and copied per sample, or None when it can."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "is_encoder_decoder", False):
        return f"{type(base).__name__} is an encoder-decoder model"
    supports_cache = getattr(type(base), "_supports_default_dynamic_cache", None)
    if supports_cache is None or not supports_cache():
        return f"{type(base).__name__} does not use transformers' Cache objects"
    implementation = getattr(getattr(base, "generation_config", None), "cache_implementation", None)
    if implementation is not None:
        return f"its generation_config asks for cache_implementation={implementation!r}"
    if not {"attention_mask", "position_ids", _cache_keyword(base)} <= _forward_parameters(base):
        return f"{type(base).__name__}.forward takes no attention_mask, position_ids or cache"
    return None


def _prefill_once(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> Any:
    """The KV cache of every row's prompt but its last token, each distinct prompt computed once.

    ``generate`` then sees a cache covering all but the last position of ``input_ids`` and starts with a one-token
    forward per row, exactly as after its own prefill. The positions are those ``generate`` gives a left-padded batch
    (the running count of real tokens). Every call, on every rank, runs exactly this one extra forward, so the
    collectives of sharded parameters stay aligned under ``synced_gpus``.
    """
    rows: dict[tuple[int, ...], int] = {}
    source_row = [rows.setdefault(tuple(ids), len(rows)) for ids in prompt_ids]  # sample -> distinct prompt
    first = torch.tensor([source_row.index(i) for i in range(len(rows))], device=input_ids.device)
    ids, mask = input_ids[first, :-1], attention_mask[first, :-1]  # [U, P - 1]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate's own position ids
    keyword = _cache_keyword(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    cache = getattr(out, keyword)
    if len(rows) < len(prompt_ids):  # all prompts distinct (the referee's open-row judgments): nothing to copy
        cache.reorder_cache(torch.tensor(source_row, device=input_ids.device))  # [U, ...] -> [B, ...] copies
    return cache


def _cache_keyword(model: torch.nn.Module) -> str:
    """The name of the cache argument: ``cache`` from transformers 5.2x on, ``past_key_values`` before."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _generation_config_keys() -> set[str]:
    from transformers import GenerationConfig

    return set(vars(GenerationConfig()))


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float | None = None,
    batch_size: int = 256,
) -> list[str]:
    """Decoded completions of rendered prompt texts, ``batch_size`` prompts per :func:`generate_ids` call; greedy
    when ``temperature`` is None. Prompts are tokenized without extra special tokens (the chat template placed them).
    """
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        completions = generate_ids(model, tokenizer, ids, max_new_tokens, temperature=temperature)
        texts += tokenizer.batch_decode(completions, skip_special_tokens=True)
    return texts


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, min_width: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask``, both ``[B, max(max_len, min_width)]``."""
    width = max(min_width, *(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)  # [B, P]
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)  # [B, P]
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long, device=device)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _trim_completion(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Cut a generated row after its first EOS, which is kept: the policy must learn to stop.

    Rows that never produced EOS carry no padding (``generate`` pads only rows that finished), so they stay whole.
    """
    for pos, token in enumerate(ids):
        if token in eos_ids:
            return ids[: pos + 1]
    return ids


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters())
    # FSDP2 parameters are DTensors whose .device is the local shard's device.
    return param.device
