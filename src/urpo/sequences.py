"""Packing prompt/completion pairs into padded tensors and micro-batches, and computing their token log-probs.

Layout of one micro-batch (as TRL and verl do it): prompts left-padded to a common length P, completions
right-padded to a common length C, so that every completion starts at column P. The model then only needs logits
for the last C+1 positions (``logits_to_keep``), which saves a ``[B, P, V]`` tensor per forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from urpo.episode import TrainSequence


@dataclass
class MicroBatch:
    """Padded tensors of a micro-batch; ``B`` sequences, prompt width ``P``, completion width ``C``."""

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    position_ids: torch.Tensor  # [B, P + C]
    completion_mask: torch.Tensor  # [B, C] float, 1 on completion tokens
    advantages: torch.Tensor  # [B]
    prompt_width: int
    engine_logprobs: torch.Tensor | None = None  # [B, C] float32, 0 on padding; None: the engine reports none

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]  # [B, C]


def split_micro_batches(
    sequences: Sequence[TrainSequence], max_tokens: int, max_sequences: int | None = None
) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size stays within ``max_tokens``.

    The padded size of a micro-batch is its count times (longest prompt + longest completion), the layout of
    :func:`collate`. Sequences are taken in order of length (prompt plus completion, then prompt, then position: the
    same split on every run), so each micro-batch holds sequences of similar lengths and padding stays small; the
    loss is normalised by the counts of the whole step, so the order changes no loss or gradient. A single sequence
    longer than the budget still gets a micro-batch of its own.
    """
    order = sorted(range(len(sequences)), key=lambda i: (_length(sequences[i]), len(sequences[i].prompt_ids), i))
    groups: list[list[int]] = []
    current: list[int] = []
    prompt = completion = 0  # the widths of the current micro-batch
    for index in order:
        seq = sequences[index]
        wider = max(prompt, len(seq.prompt_ids)), max(completion, len(seq.completion_ids), 1)
        too_many = max_sequences is not None and len(current) >= max_sequences
        if current and (sum(wider) * (len(current) + 1) > max_tokens or too_many):
            groups.append(current)
            current, wider = [], (len(seq.prompt_ids), max(len(seq.completion_ids), 1))
        current.append(index)
        prompt, completion = wider
    if current:
        groups.append(current)
    return groups


def padding_share(batches: Sequence[MicroBatch]) -> tuple[int, int]:
    """Token positions of ``batches`` that hold a real token, and all their positions (padding included)."""
    real = sum(int(b.attention_mask.sum()) for b in batches)
    return real, sum(b.input_ids.numel() for b in batches)


def _length(seq: TrainSequence) -> int:
    return len(seq.prompt_ids) + len(seq.completion_ids)


def collate(sequences: Sequence[TrainSequence], pad_id: int, device: torch.device) -> MicroBatch:
    """Pad a list of sequences into a :class:`MicroBatch` on ``device``; their engine log-probs are right-padded
    like the completions (when every sequence has them)."""
    prompt_width = max(len(s.prompt_ids) for s in sequences)
    completion_width = max(max(len(s.completion_ids) for s in sequences), 1)
    size = (len(sequences), prompt_width + completion_width)
    input_ids = torch.full(size, pad_id, dtype=torch.long)  # [B, P + C]
    attention_mask = torch.zeros(size, dtype=torch.long)  # [B, P + C]
    for row, seq in enumerate(sequences):
        start, end = prompt_width - len(seq.prompt_ids), prompt_width + len(seq.completion_ids)
        input_ids[row, start:end] = torch.tensor(seq.prompt_ids + seq.completion_ids, dtype=torch.long)
        attention_mask[row, start:end] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P + C]
    completion_mask = attention_mask[:, prompt_width:].float()  # [B, C]
    advantages = torch.tensor([s.advantage for s in sequences], dtype=torch.float32)  # [B]
    return MicroBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        completion_mask=completion_mask.to(device),
        advantages=advantages.to(device),
        prompt_width=prompt_width,
        engine_logprobs=_engine_logprobs(sequences, completion_width, device),
    )


def _engine_logprobs(sequences: Sequence[TrainSequence], width: int, device: torch.device) -> torch.Tensor | None:
    """The sequences' engine log-probs as ``[B, width]`` float32, zero-padded; None when none has them."""
    rows = [s.engine_logprobs for s in sequences]
    if all(row is None for row in rows):
        return None
    if any(row is None for row in rows):
        raise RuntimeError("a micro-batch mixes sequences with and without engine log-probs")
    out = torch.zeros((len(rows), width), dtype=torch.float32)  # [B, C]
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.float32)
    return out.to(device)


def completion_logits(model: torch.nn.Module, batch: MicroBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predict each completion token, divided by the sampling temperature: ``[B, C, V]``."""
    width = batch.completion_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # [B, C, V]: position t predicts token t + 1
    return logits.float() / temperature if temperature != 1.0 else logits.float()


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token under ``logits``: ``[B, C]``, without materialising a full log-softmax."""
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # [B, C]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, C]
