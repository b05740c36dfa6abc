"""Rows: the three kinds of alignment data, after adapters have read them from their native formats.

Every row keeps the ``source`` it came from (a file path or hub dataset id) and its ``index`` there, so that any
reward, metric or error can be traced back to one record. Rows validate themselves on construction and raise
:class:`~urpo.errors.DataError` naming the source, the row and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from urpo.errors import DataError

RowKind = Literal["verifiable", "preference", "open"]
ROW_KINDS: tuple[RowKind, ...] = ("verifiable", "preference", "open")


@dataclass(frozen=True, kw_only=True)
class BaseRow:
    """Fields every row has."""

    source: str
    """Where the row came from: a file path or a hub dataset id (with split)."""
    index: int
    """Position of the record in its source (0-based line or row number)."""
    prompt: str
    """The user-facing task: a question, an instruction, or the conversation to be answered."""

    kind: ClassVar[RowKind]

    def _fail(self, field_name: str, message: str) -> DataError:
        return DataError(message, source=self.source, row=self.index, field=field_name)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise self._fail("prompt", "prompt is empty or not a string")


@dataclass(frozen=True, kw_only=True)
class VerifiableRow(BaseRow):
    """A problem with a gold answer that a rule verifier can check (GSM8K, MATH, ...)."""

    answer: str
    """The gold final answer, as plain text or LaTeX."""
    solution: str | None = None
    """An optional reference solution (worked steps); never shown to the player by default."""

    kind: ClassVar[RowKind] = "verifiable"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise self._fail("answer", "gold answer is empty or not a string")


@dataclass(frozen=True, kw_only=True)
class PreferenceRow(BaseRow):
    """A prompt, N >= 2 responses and their gold quality; recast as a judging task for the referee.

    ``scores`` give the gold order: a higher score is a better response, equal scores are a tie. Soft labels (e.g.
    AlpacaEval's fractional preferences) are kept as graded scores rather than rounded to a hard order.
    """

    responses: tuple[str, ...]
    """The candidate responses, in the order of the source record."""
    scores: tuple[float, ...]
    """Gold utility of each response (same length as ``responses``); higher is better."""

    kind: ClassVar[RowKind] = "preference"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.responses) < 2:
            raise self._fail("responses", f"needs at least 2 responses, got {len(self.responses)}")
        for i, response in enumerate(self.responses):
            if not isinstance(response, str) or not response.strip():
                raise self._fail(f"responses[{i}]", "response is empty or not a string")
        if len(self.scores) != len(self.responses):
            raise self._fail(
                "scores", f"gold ranking has {len(self.scores)} entries for {len(self.responses)} responses"
            )
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in self.scores):
            raise self._fail("scores", f"gold scores must be finite numbers, got {self.scores!r}")
        if len(set(self.scores)) == 1:
            raise self._fail("scores", "all responses are tied: the row carries no preference")
        first_of: dict[str, int] = {}
        for i, response in enumerate(self.responses):
            j = first_of.setdefault(response.strip(), i)
            if j != i and self.scores[i] != self.scores[j]:
                raise self._fail(
                    "responses",
                    f"responses {j} and {i} are identical but scored {self.scores[j]} and {self.scores[i]}: "
                    "no judge can tell them apart",
                )

    def gold_order(self) -> list[int]:
        """Indices of the responses, best first (ties keep their source order)."""
        return sorted(range(len(self.responses)), key=lambda i: -self.scores[i])


@dataclass(frozen=True, kw_only=True)
class OpenRow(BaseRow):
    """An open-ended instruction with no gold answer; rewarded by the model judging its own answers."""

    reference: str | None = None
    """An optional reference answer the referee template may show (never the player)."""

    kind: ClassVar[RowKind] = "open"


Row = VerifiableRow | PreferenceRow | OpenRow
ROW_TYPES: dict[RowKind, type] = {"verifiable": VerifiableRow, "preference": PreferenceRow, "open": OpenRow}

__all__ = ["ROW_KINDS", "ROW_TYPES", "BaseRow", "OpenRow", "PreferenceRow", "Row", "RowKind", "VerifiableRow"]
