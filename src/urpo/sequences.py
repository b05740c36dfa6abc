"""Packing prompt/completion pairs into padded tensors and micro-batches, and computing their token log-probs.

Layout of one micro-batch (as TRL and verl do it): prompts left-padded to a common length P, completions
right-padded to a common length C, so that every completion starts at column P. The model then only needs logits
for the last C+1 positions (``logits_to_keep``), which saves a ``[B, P, V]`` tensor per forward.

A micro-batch also records which of its sequences share a prompt (``prompt_rows``, ``prompt_index``), so that the
shared-prefix update (:mod:`urpo.logprobs`) can run each distinct prompt through the model once.
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
    prompt_rows: torch.Tensor | None = None  # [N] long: the first row holding each of the N distinct prompts
    prompt_index: torch.Tensor | None = None  # [B] long: which distinct prompt (0..N-1) each row continues

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]  # [B, C]


def split_micro_batches(
    sequences: Sequence[TrainSequence],
    max_tokens: int,
    max_sequences: int | None = None,
    shared_prefix: bool = False,
) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size stays within ``max_tokens``.

    The padded size of a micro-batch is the token positions its forward passes run: count x (longest prompt +
    longest completion) in the layout of :func:`collate`, or with ``shared_prefix`` (each distinct prompt run once)
    distinct prompts x longest prompt + count x longest completion. Sequences are taken in order of length (prompt
    plus completion, then prompt, then position; with ``shared_prefix``, prompt by prompt, so a group's sequences stay
    together): the same split on every run, sequences of similar lengths together, little padding. The loss is
    normalised by the counts of the whole step, so the order changes no loss or gradient. A single sequence
    longer than the budget still gets a micro-batch of its own; a group of sequences sharing a prompt may be split
    over several micro-batches (each then runs the prompt).
    """
    order = _shared_prefix_order(sequences) if shared_prefix else _length_order(sequences)
    groups: list[list[int]] = []
    current: list[int] = []
    prompts: set[tuple[int, ...]] = set()
    prompt = completion = 0  # the widths of the current micro-batch
    for index in order:
        seq = sequences[index]
        key = tuple(seq.prompt_ids)
        wider = max(prompt, len(seq.prompt_ids)), max(completion, len(seq.completion_ids), 1)
        count = len(current) + 1
        if shared_prefix:
            size = (len(prompts) + (key not in prompts)) * wider[0] + count * wider[1]
        else:
            size = count * sum(wider)
        too_many = max_sequences is not None and len(current) >= max_sequences
        if current and (size > max_tokens or too_many):
            groups.append(current)
            current, prompts = [], set()
            wider = len(seq.prompt_ids), max(len(seq.completion_ids), 1)
        current.append(index)
        prompts.add(key)
        prompt, completion = wider
    if current:
        groups.append(current)
    return groups


def _length_order(sequences: Sequence[TrainSequence]) -> list[int]:
    return sorted(range(len(sequences)), key=lambda i: (_length(sequences[i]), len(sequences[i].prompt_ids), i))


def _shared_prefix_order(sequences: Sequence[TrainSequence]) -> list[int]:
    """Prompts by length (then first appearance), each prompt's sequences by completion length (then position)."""
    first: dict[tuple[int, ...], int] = {}
    for index, seq in enumerate(sequences):
        first.setdefault(tuple(seq.prompt_ids), index)

    def key(i: int) -> tuple[int, int, int, int]:
        seq = sequences[i]
        return len(seq.prompt_ids), first[tuple(seq.prompt_ids)], len(seq.completion_ids), i

    return sorted(range(len(sequences)), key=key)


def padding_share(batches: Sequence[MicroBatch], shared_prefix: bool = False) -> tuple[int, int]:
    """Token positions of ``batches`` that hold a real token, and all the positions their forward passes run
    (padding included); with ``shared_prefix``, each distinct prompt of a micro-batch counts once."""
    if not shared_prefix:
        real = sum(int(b.attention_mask.sum()) for b in batches)
        return real, sum(b.input_ids.numel() for b in batches)
    real = positions = 0
    for b in batches:
        prompts = b.attention_mask[b.prompt_rows, : b.prompt_width]  # [N, P]
        real += int(prompts.sum()) + int(b.completion_mask.sum())
        positions += prompts.numel() + b.completion_mask.numel()
    return real, positions


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
    prompt_rows, prompt_index = _distinct_prompts(sequences)  # [N], [B]
    return MicroBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        completion_mask=completion_mask.to(device),
        advantages=advantages.to(device),
        prompt_width=prompt_width,
        engine_logprobs=_engine_logprobs(sequences, completion_width, device),
        prompt_rows=prompt_rows.to(device),
        prompt_index=prompt_index.to(device),
    )


def _distinct_prompts(sequences: Sequence[TrainSequence]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first row of each distinct prompt ``[N]`` and, for every row, the number of its prompt ``[B]``."""
    number: dict[tuple[int, ...], int] = {}
    rows, index = [], []
    for row, seq in enumerate(sequences):
        key = tuple(seq.prompt_ids)
        if key not in number:
            number[key] = len(rows)
            rows.append(row)
        index.append(number[key])
    return torch.tensor(rows, dtype=torch.long), torch.tensor(index, dtype=torch.long)


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
