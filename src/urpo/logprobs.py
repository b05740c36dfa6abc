"""Token log-probs and entropy of a micro-batch's completions, computed from the final hidden states in chunks.

The whole-logits way (:func:`urpo.sequences.completion_logits`) holds ``[B, C, V]`` fp32 logits, plus the copies that
log-softmax, the entropy metric and autograd keep: with a 152k vocabulary that is the largest activation of a step.
Here the model returns its final hidden states (and the logits of one position only); the output head is applied
to ``chunk_tokens`` completion tokens at a time, and each chunk's logits are recomputed in backward
(``torch.utils.checkpoint``), so at most one chunk's logits exist at any moment. Padding positions are skipped
altogether. Values and gradients equal the whole-logits way's to float tolerance (tests/test_logprobs.py).

Models whose head does more than a linear map of the last hidden state (logit soft-capping, logit scaling) are
detected on the first call, by comparing the head applied to the last hidden state with the model's own logits of
that position; they fall back to the whole-logits way with a warning naming the reason.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from urpo.objective import entropy_from_logits
from urpo.sequences import MicroBatch, token_logprobs
from urpo.shared_prefix import plain_forward, shared_prefix_forward

_FALLBACK: weakref.WeakKeyDictionary[torch.nn.Module, str | None] = weakref.WeakKeyDictionary()
"""Per model: why its head cannot be applied in chunks (None: it can); settled on the model's first call."""


@dataclass
class CompletionScores:
    """Per completion token of a micro-batch: its log-prob (with gradient) and the policy's entropy (detached)."""

    logprobs: Tensor  # [B, C] float32; 0 on padding in the chunked way
    entropy: Tensor  # [B, C] float32, no gradient


def score_completions(
    model: torch.nn.Module,
    batch: MicroBatch,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    shared_prefix: bool = False,
) -> CompletionScores:
    """Log-probs and entropy of ``batch``'s completion tokens under ``model``, at the sampling temperature.

    ``chunk_tokens``: completion tokens whose logits are computed at once (0 or None: all of them, the whole-logits
    way). ``shared_prefix``: run each distinct prompt once (:mod:`urpo.shared_prefix`; the caller checks that the
    model supports it).
    """
    forward = shared_prefix_forward if shared_prefix else plain_forward
    if not chunk_tokens or _FALLBACK.get(model, None) is not None:
        return _from_logits(forward(model, batch, whole_logits=True).logits, batch, temperature)
    states = forward(model, batch, whole_logits=False)
    head = model.get_output_embeddings()
    if model not in _FALLBACK and not _head_is_linear(model, head, states.last_hidden, states.last_logits):
        return _from_logits(forward(model, batch, whole_logits=True).logits, batch, temperature)
    return chunked_scores(head, states.hidden, batch.completion_ids, batch.completion_mask, temperature, chunk_tokens)


def whole_scores(model: torch.nn.Module, batch: MicroBatch, temperature: float = 1.0) -> CompletionScores:
    """The whole-logits way: ``[B, C, V]`` fp32 logits at once."""
    return _from_logits(plain_forward(model, batch, whole_logits=True).logits, batch, temperature)


def _from_logits(logits: Tensor, batch: MicroBatch, temperature: float) -> CompletionScores:
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()  # [B, C, V]
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach())  # [B, C]
    return CompletionScores(token_logprobs(logits, batch.completion_ids), entropy)


def chunked_scores(
    head: Callable[[Tensor], Tensor],
    hidden: Tensor,
    token_ids: Tensor,
    mask: Tensor,
    temperature: float,
    chunk_tokens: int,
) -> CompletionScores:
    """Log-probs and entropy of ``token_ids`` from the hidden states that predict them, ``chunk_tokens`` at a time.

    Args:
        head: The output head (hidden state -> logits).
        hidden: Hidden states, ``[B, C, H]``; position ``t`` predicts ``token_ids[:, t]``.
        token_ids: The completion tokens, ``[B, C]``.
        mask: 1 on completion tokens, 0 on padding (skipped), ``[B, C]``.
        temperature: The logits are divided by it, as in sampling.
        chunk_tokens: Tokens per chunk, >= 1.
    """
    keep = mask.bool()  # [B, C]
    flat_hidden, flat_ids = hidden[keep], token_ids[keep]  # [N, H], [N]
    if flat_ids.numel() == 0:  # keep the graph connected to the head, so data-parallel backward sees every parameter
        flat_hidden, flat_ids = hidden.reshape(-1, hidden.shape[-1])[:1], token_ids.reshape(-1)[:1]
        keep = torch.zeros_like(keep)
    recompute = torch.is_grad_enabled() and (flat_hidden.requires_grad or _has_trainable(head))
    logps, entropies = [], []
    for start in range(0, flat_ids.shape[0], chunk_tokens):
        chunk = (flat_hidden[start : start + chunk_tokens], flat_ids[start : start + chunk_tokens])
        if recompute:  # the chunk's logits are not kept for backward: it runs the chunk again
            logp, entropy = checkpoint(_chunk_scores, head, *chunk, temperature, use_reentrant=False)
        else:
            logp, entropy = _chunk_scores(head, *chunk, temperature)
        logps.append(logp)
        entropies.append(entropy)
    flat_logp, flat_entropy = torch.cat(logps), torch.cat(entropies)  # [N] each
    if not keep.any():
        zeros = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)  # [B, C]
        return CompletionScores(zeros + 0.0 * flat_logp.sum(), zeros)
    logprobs = torch.zeros(keep.shape, dtype=flat_logp.dtype, device=keep.device).masked_scatter(keep, flat_logp)
    entropy = torch.zeros(keep.shape, dtype=flat_entropy.dtype, device=keep.device).masked_scatter(keep, flat_entropy)
    return CompletionScores(logprobs, entropy)  # [B, C] each


def _chunk_scores(
    head: Callable[[Tensor], Tensor], hidden: Tensor, token_ids: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Log-prob ``[n]`` and entropy ``[n]`` of ``n`` tokens from their hidden states ``[n, H]``."""
    logits = head(hidden).float()  # [n, V]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, token_ids)  # [n]
    # After the log-prob, without gradient: recomputation in backward stops once logp's saved tensors are back.
    with torch.no_grad():
        entropy = entropy_from_logits(logits)  # [n]
    return logp, entropy


def _has_trainable(module: object) -> bool:
    return isinstance(module, torch.nn.Module) and any(p.requires_grad for p in module.parameters())


@torch.no_grad()
def _head_is_linear(model: torch.nn.Module, head: torch.nn.Module | None, last_hidden: Tensor, logits: Tensor) -> bool:
    """Whether the model's logits are its output head applied to the final hidden state (recorded per model)."""
    reason = None
    if head is None:
        reason = "the model has no output embeddings"
    else:
        ours = head(last_hidden[:, None])[:, 0]  # [B, V], called with the shape the model calls it with
        tolerance = 8 * torch.finfo(logits.dtype).eps * logits.abs().max().clamp(min=1.0)  # a few roundings
        if ours.shape != logits.shape or not bool(((ours.float() - logits.float()).abs().max() <= tolerance).item()):
            reason = "its logits are not the output head applied to the last hidden state (soft-capping, scaling)"
    _FALLBACK[model] = reason
    if reason is not None:
        warnings.warn(f"urpo: log-probs computed from whole logits for {type(model).__name__}: {reason}", stacklevel=3)
    return reason is None
