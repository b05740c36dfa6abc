"""The data of one training step, typed: an :class:`Episode` per row, a :class:`TrainSequence` per completion.

The step's data flows one way through the phases: the module renders each row into an :class:`Episode`, the rollout
fills in its G completions (token ids, texts, finish reasons and, when the engine reports them, the engine's
log-probs), reward callbacks score it (keeping what they want to remember in :attr:`Episode.notes`), and every
rewarded completion becomes a :class:`TrainSequence` for the update, carrying its own engine log-probs along.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from urpo.data.schema import Row
    from urpo.engines.base import FinishReason

Messages = list[dict[str, str]]
"""A chat prompt: ``{"role": ..., "content": ...}`` messages."""


@dataclass
class Episode:
    """One row of a step, the prompt it was rendered to, and its group of G completions."""

    row: Row
    """The data row."""
    messages: Messages
    """The chat messages the completions answer (player prompt, or referee prompt for preference rows)."""
    completions: list[str] = field(default_factory=list)
    """The G sampled completions (decoded text)."""
    finish_reasons: list[FinishReason] = field(default_factory=list)
    """Why each completion ended ('stop' or 'length')."""
    orders: list[list[int]] | None = None
    """Preference rows: the presentation order of the row's responses in each completion's judging prompt (the
    referee saw response ``orders[j][k]`` at position k); None for rows that are not judging tasks."""
    prompt_ids: list[list[int]] = field(default_factory=list)
    """Token ids of the prompt each completion answered (one entry per completion; filled by the rollout)."""
    completion_ids: list[list[int]] = field(default_factory=list)
    """Token ids of each completion, ending with EOS when it stopped by itself (filled by the rollout)."""
    engine_logprobs: list[list[float]] | None = None
    """The rollout engine's log-prob of each completion token (engines that report them, e.g. vLLM); else None."""
    notes: dict[str, object] = field(default_factory=dict)
    """Reward-private records, one per reward callback under its name (e.g. the consistency check's second
    judgments); each callback keeps a dataclass of its own there. Nothing else reads or writes them."""

    @property
    def order(self) -> list[int] | None:
        """The presentation order of the first completion's judging prompt (None: not a judging task)."""
        return list(self.orders[0]) if self.orders else None


@dataclass
class TrainSequence:
    """One completion to train on, with the advantage of its group and the engine's log-probs of its tokens."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    episode: int
    """Index of the episode (row) it belongs to in the step."""
    sample: int
    """Index of the completion within its group."""
    engine_logprobs: list[float] | None = None
    """The rollout engine's log-prob of each completion token; None when the engine reports none (HF generate)."""

    def __post_init__(self) -> None:
        if self.engine_logprobs is not None and len(self.engine_logprobs) != len(self.completion_ids):
            found, expected = len(self.engine_logprobs), len(self.completion_ids)
            raise RuntimeError(f"engine log-probs cover {found} tokens of a {expected}-token completion")


def train_sequences(episodes: Sequence[Episode], rewards: Tensor, advantages: Tensor) -> list[TrainSequence]:
    """One training sequence per completion that got a reward (``rewards``, ``advantages``: ``[N, G]``), with the
    engine's log-probs of its tokens; unrewarded (NaN) and empty completions are left out of the loss."""
    sequences = []
    for i, episode in enumerate(episodes):
        engine = episode.engine_logprobs
        for j, completion_ids in enumerate(episode.completion_ids):
            if math.isnan(rewards[i, j].item()) or not completion_ids:
                continue
            logprobs = list(engine[j]) if engine is not None else None
            advantage = advantages[i, j].item()
            sequences.append(TrainSequence(episode.prompt_ids[j], completion_ids, advantage, i, j, logprobs))
    return sequences


__all__ = ["Episode", "Messages", "TrainSequence", "train_sequences"]
