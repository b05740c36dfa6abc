"""Mixing sources into batches whose per-kind share is exact in every batch, deterministically and resumably.

* Each kind gets a fixed quota of every batch (largest-remainder rounding of ``share x batch_size``), so a batch of
  8 with shares 0.4 / 0.3 / 0.3 always holds 3 / 3 / 2 rows (remainders break ties by kind order), never 'on average'.
* Within a kind, rows are drawn from its sources by stride scheduling: the next row comes from the source with the
  smallest ``(taken + 1) / weight``, which keeps every prefix of the stream proportional to the weights.
* Each source is a cursor over its rows: in memory, a fresh seeded permutation per pass; streamed, the records in
  file order starting from an offset. The whole position is a small dict saved in Lightning checkpoints.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from urpo.data.schema import ROW_KINDS, Row, RowKind
from urpo.errors import ConfigError


def kind_quotas(mixture: Mapping[RowKind, float], batch_size: int) -> dict[RowKind, int]:
    """Rows of each kind in every batch: shares scaled to ``batch_size`` by largest remainder."""
    negative = {k: v for k, v in mixture.items() if not v >= 0}
    if negative:
        raise ConfigError(f"data.mixture: shares must be >= 0 (0 turns a kind off), got {negative}")
    shares = {k: float(v) for k, v in mixture.items() if v > 0}
    if not shares:
        raise ConfigError("data.mixture: at least one kind needs a positive share")
    unknown = set(shares) - set(ROW_KINDS)
    if unknown:
        raise ConfigError(f"data.mixture: unknown kinds {sorted(unknown)}; kinds are {ROW_KINDS}")
    total = sum(shares.values())
    exact = {k: batch_size * v / total for k, v in shares.items()}
    quotas = {k: math.floor(x) for k, x in exact.items()}
    order = sorted(shares, key=lambda k: (-(exact[k] - quotas[k]), ROW_KINDS.index(k)))
    for kind in order[: batch_size - sum(quotas.values())]:
        quotas[kind] += 1
    empty = [k for k, q in quotas.items() if q == 0]
    if empty:
        raise ConfigError(f"data.batch_size {batch_size} is too small: kinds {empty} would get no row in a batch")
    return quotas


def normalised_shares(mixture: Mapping[RowKind, float]) -> dict[RowKind, float] | None:
    """The shares batches will really have when ``mixture`` does not sum to 1 (None when it does)."""
    total = sum(float(v) for v in mixture.values() if v > 0)
    if total <= 0 or math.isclose(total, 1.0, rel_tol=1e-6):
        return None
    return {k: round(float(v) / total, 4) for k, v in mixture.items() if v > 0}


class MemoryCursor:
    """Endless walk over in-memory rows: a new seeded permutation for every pass."""

    def __init__(self, rows: Sequence[Row], seed: int) -> None:
        self.rows, self.seed = rows, seed
        self.passes, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{self.passes}").shuffle(order)
        return order

    def next(self) -> Row:
        if self.offset >= len(self._order):
            self.passes, self.offset = self.passes + 1, 0
            self._order = self._permutation()
        row = self.rows[self._order[self.offset]]
        self.offset += 1
        return row

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "offset": self.offset}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.passes, self.offset = int(state["passes"]), int(state["offset"])
        self._order = self._permutation()


class StreamCursor:
    """Endless walk over a streamed source, in file order, restarting at the top after each pass.

    Args:
        open_stream: returns an iterator over this rank's rows whose record index is ``>= start``.
    """

    def __init__(self, open_stream: Callable[[int], Iterator[Row]]) -> None:
        self.open_stream = open_stream
        self.passes, self.start = 0, 0
        self._iterator: Iterator[Row] | None = None

    def next(self) -> Row:
        if self._iterator is None:
            self._iterator = self.open_stream(self.start)
        row = next(self._iterator, None)
        if row is None:
            self.passes, self.start = self.passes + 1, 0
            self._iterator = self.open_stream(0)
            row = next(self._iterator)  # an empty source raises DataError when read from its start
        self.start = row.index + 1  # record index to resume after: the source may be sharded over ranks
        return row

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "start": self.start}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.passes, self.start = int(state["passes"]), int(state["start"])
        self._iterator = None


Cursor = MemoryCursor | StreamCursor


class Mixer:
    """Builds batches from per-kind sources with exact quotas (see the module docstring).

    Args:
        cursors: per kind, a list of ``(weight, cursor)`` pairs, one per source of that kind.
        quotas: rows of each kind per batch (from :func:`kind_quotas`).
        transform: applied to each drawn row; returns None to drop it (e.g. prompt too long), in which case the
            next row is drawn instead.
    """

    def __init__(
        self,
        cursors: Mapping[RowKind, Sequence[tuple[float, Cursor]]],
        quotas: Mapping[RowKind, int],
        transform: Callable[[Row], Row | None] | None = None,
        max_draws_per_row: int = 1000,
    ) -> None:
        missing = [k for k in quotas if not cursors.get(k)]
        if missing:
            raise ConfigError(f"data: kinds {missing} have a share in the mixture but no source")
        self.cursors, self.quotas = cursors, dict(quotas)
        self.transform = transform or (lambda row: row)
        self.max_draws_per_row = max_draws_per_row
        self.taken = {k: [0] * len(cursors[k]) for k in quotas}
        self.batches = 0

    def next_batch(self) -> list[Row]:
        batch = [self._draw(kind) for kind in ROW_KINDS if kind in self.quotas for _ in range(self.quotas[kind])]
        self.batches += 1
        return batch

    def _draw(self, kind: RowKind) -> Row:
        for _ in range(self.max_draws_per_row):
            taken, sources = self.taken[kind], self.cursors[kind]
            pick = min(range(len(sources)), key=lambda i: ((taken[i] + 1) / sources[i][0], i))
            taken[pick] += 1
            row = self.transform(sources[pick][1].next())
            if row is not None:
                return row
        raise ConfigError(
            f"data: {self.max_draws_per_row} rows of kind {kind!r} in a row were dropped; check max_prompt_tokens"
        )

    def state_dict(self) -> dict[str, Any]:
        cursors = {k: [c.state_dict() for _, c in v] for k, v in self.cursors.items()}
        return {"batches": self.batches, "taken": {k: list(v) for k, v in self.taken.items()}, "cursors": cursors}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.batches = int(state["batches"])
        for kind, counts in state["taken"].items():
            if kind in self.taken and len(counts) == len(self.taken[kind]):
                self.taken[kind] = list(counts)
        for kind, states in state["cursors"].items():
            for (_, cursor), cursor_state in zip(self.cursors.get(kind, []), states):
                cursor.load_state_dict(cursor_state)
