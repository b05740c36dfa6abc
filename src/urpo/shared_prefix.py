"""The forward passes of a micro-batch that give the states predicting its completion tokens: plain or shared-prefix.

Plain: every sequence runs as prompt + completion, so a prompt shared by G completions is computed G times. Shared
prefix: the micro-batch's distinct prompts run once (``[N, P]``) with a KV cache; the cache is gathered to the
``B`` rows that continue each prompt and the completions (``[B, C]``) run on top of it. Attention is causal, so a
prompt's keys and values do not depend on what follows: the states are those of the plain way, and in backward the
gradients of all G completions flow into their prompt's single computation, once. Equality with the plain way, in
values and gradients, is tested in tests/test_shared_prefix.py.

The prompt's states are copied to its rows by :func:`gather_rows`, not by indexing: the backward of ``x[index]``
(``index_put_`` with accumulation) adds the gradients of a prompt's rows with atomic adds from several threads on CPU
once the tensor is large, so the order of the additions, and the last bits of the sum, change from run to run, and a
resumed run would not end with the straight run's weights. :func:`gather_rows` sums them in a fixed order.

Only models whose cache is plain full attention can do it (:func:`shared_prefix_support` names why not, and the
update then runs plain). Activation checkpointing in transformers drops the cache of training forwards, so a
checkpointed policy runs plain too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from urpo.sequences import MicroBatch

ATTENTION = ("sdpa", "eager")
"""Attention implementations the shared-prefix forward was checked with (tests on CPU)."""


@dataclass
class PredictionStates:
    """What a forward gives about the positions predicting the completion tokens (position ``t`` predicts token
    ``t``): the final hidden states, or the logits (model dtype) when asked for whole logits; and the last position's
    hidden state and logits, to check that the logits are the head applied to the hidden state."""

    hidden: Tensor | None = None  # [B, C, H]
    logits: Tensor | None = None  # [B, C, V]
    last_hidden: Tensor | None = None  # [B, H]
    last_logits: Tensor | None = None  # [B, V]


def plain_forward(model: torch.nn.Module, batch: MicroBatch, whole_logits: bool) -> PredictionStates:
    """Prompt + completion of every row in one forward."""
    width = batch.completion_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width + 1 if whole_logits else 1,
        output_hidden_states=not whole_logits,
        use_cache=False,
    )
    if whole_logits:
        return PredictionStates(logits=out.logits[:, :-1])  # position t predicts token t + 1
    hidden = out.hidden_states[-1]  # [B, P + C, H], after the final norm
    start = batch.prompt_width - 1
    return PredictionStates(hidden[:, start : start + width], None, hidden[:, -1], out.logits[:, -1])


def shared_prefix_forward(model: torch.nn.Module, batch: MicroBatch, whole_logits: bool) -> PredictionStates:
    """Each distinct prompt once, then every completion on its prompt's KV cache."""
    from transformers import DynamicCache

    width, prompt = batch.completion_ids.shape[1], batch.prompt_width
    rows, index = batch.prompt_rows, batch.prompt_index  # [N], [B]
    copies = copying_rows(index, len(rows))
    cache = DynamicCache(config=_hf_model(model).config)
    cache_arg = {_cache_keyword(model): cache}
    head = model(
        input_ids=batch.input_ids[rows, :prompt],
        attention_mask=batch.attention_mask[rows, :prompt],
        position_ids=batch.position_ids[rows, :prompt],
        logits_to_keep=1,
        output_hidden_states=not whole_logits,
        use_cache=True,
        **cache_arg,
    )
    for layer in cache.layers:  # [N, ...] -> [B, ...]: gathered, so backward sums the rows into each prompt
        layer.keys, layer.values = gather_rows(layer.keys, index, copies), gather_rows(layer.values, index, copies)
    tail = model(
        input_ids=batch.completion_ids,
        attention_mask=batch.attention_mask,  # [B, P + C]: the prompt's padding stays masked
        position_ids=batch.position_ids[:, prompt:],
        logits_to_keep=width if whole_logits else 1,
        output_hidden_states=not whole_logits,
        use_cache=True,
        **cache_arg,
    )
    if whole_logits:  # the prompt's last position predicts the first completion token
        first = gather_rows(head.logits[:, -1], index, copies)  # [B, V]
        return PredictionStates(logits=torch.cat([first[:, None], tail.logits[:, :-1]], dim=1))
    first = gather_rows(head.hidden_states[-1][:, -1], index, copies)  # [B, H]
    hidden = tail.hidden_states[-1]  # [B, C, H]
    states = torch.cat([first[:, None], hidden[:, :-1]], dim=1)  # [B, C, H]
    return PredictionStates(states, None, hidden[:, -1], tail.logits[:, -1])


def copying_rows(index: Tensor, sources: int) -> list[list[int]]:
    """For each of ``sources`` source rows, the rows ``b`` with ``index[b]`` equal to it (in order)."""
    rows: list[list[int]] = [[] for _ in range(sources)]
    for row, n in enumerate(index.tolist()):
        rows[n].append(row)
    return rows


def gather_rows(source: Tensor, index: Tensor, copies: list[list[int]]) -> Tensor:
    """``source[index]`` along the first dimension (``[N, ...]`` -> ``[B, ...]``), whose backward sums the gradients
    of the rows that copy a source row (``copies``, from :func:`copying_rows`) in a fixed order, so that the same
    run gives the same bits every time."""
    return _GatherRows.apply(source, index, copies)


class _GatherRows(torch.autograd.Function):
    """Forward: ``index_select``. Backward: each source row's gradient is the sum over the rows that copy it, taken
    by ``sum`` (a reduction whose order depends on the shapes and the thread count only), never by a scatter-add
    whose order depends on how threads race (``index_put_`` with accumulation on CPU, ``index_add_`` on GPU)."""

    @staticmethod
    def forward(ctx, source: Tensor, index: Tensor, copies: list[list[int]]) -> Tensor:
        ctx.copies = copies
        return source.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        out = grad.new_empty((len(ctx.copies), *grad.shape[1:]))
        for n, rows in enumerate(ctx.copies):
            torch.sum(_rows(grad, rows), dim=0, out=out[n])
        return out, None, None


def _rows(grad: Tensor, rows: list[int]) -> Tensor:
    """``grad[rows]``, a view when the rows are consecutive (a group's rows usually are)."""
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return grad.narrow(0, rows[0], len(rows))
    return grad[torch.tensor(rows, dtype=torch.long, device=grad.device)]


def shared_prefix_support(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run the shared-prefix forward of a training step, or None when it can."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = _hf_model(model).config
    attention = getattr(config, "_attn_implementation", None)
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model"
    if attention not in ATTENTION:
        return f"its attention implementation {attention!r} is not one of {ATTENTION} (untested)"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return "it has layers other than full attention (sliding window, linear or recurrent)"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "it uses sliding-window attention"
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=config).layers):
        return "its KV cache is not a plain full-attention cache"
    if model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        return "activation checkpointing drops the KV cache of training forwards"
    return None


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    parameters = inspect.signature(_hf_model(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
