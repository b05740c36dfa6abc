"""Grouped-query attention on CPU without copying the KV cache to every head, for generation.

With a padding mask (any batch of prompts of different lengths), ``transformers``' SDPA attention repeats the key and
value states of a grouped-query model (Qwen, Llama: fewer KV heads than query heads) to all query heads before every
attention call, because CUDA's fast kernels cannot take a mask and grouped heads at once. On CPU that copy is most of
a decoding step once prompts are long: every token step copies the whole cache, G / KV-heads times over. Measured on a
2-core AMD EPYC for 32 sequences with a ~760-token cache and 12 query / 4 KV heads: 114 ms per layer with the copy,
7 ms with PyTorch's own grouped-query SDPA (``enable_gqa``), to the same bits. A URPO step, whose batches mix short
player prompts with long referee prompts, pays it on every sequence of the batch.

:func:`cpu_grouped_query_attention` switches a model to :data:`GQA_SDPA` for the duration of a block (the rollout's
``generate`` call): the same SDPA masks, the grouped-query call on CPU, and ``transformers``' SDPA everywhere else
(CUDA, no mask, no grouping), so nothing changes on a GPU. Training forwards keep the stock path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GQA_SDPA = "urpo_gqa_sdpa"
"""The attention implementation name :func:`cpu_grouped_query_attention` sets while it is active."""


def grouped_query_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``transformers``' SDPA attention, but a masked grouped-query call on CPU reads the KV heads as they are."""
    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
    if query.device.type != "cpu" or groups == 1 or attention_mask is None or plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    # A mask is given, so the call is never causal by flag (as in transformers' SDPA path).
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=True,
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_SDPA, grouped_query_sdpa)
AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


@contextmanager
def cpu_grouped_query_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model`` runs its attention with :func:`grouped_query_sdpa` if it uses SDPA on CPU.

    Any other model (another attention implementation, parameters on a GPU, no ``config``) is left as it is. The
    model's implementation is restored on exit, also after an error.
    """
    config = getattr(model, "config", None)
    parameter = next(model.parameters(), None)
    on_cpu = parameter is not None and parameter.device.type == "cpu"
    if not on_cpu or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = GQA_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


__all__ = ["GQA_SDPA", "cpu_grouped_query_attention", "grouped_query_sdpa"]
