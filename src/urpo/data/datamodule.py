"""``URPODataModule``: the three kinds of alignment data, mixed into every batch in fixed shares.

It yields lists of rows, never tensors: prompts are rendered and generated from inside the module. See
:mod:`urpo.data.mixture` for how batches are drawn, :mod:`urpo.data.sources` and :mod:`urpo.data.formats` for the
supported files and public dataset formats.

The DataModule and the model it feeds exchange what they need through two documented faces, not each other's
insides: the model is a :class:`PromptModel` (its tokenizer and the prompt a row is rendered to, for
``max_prompt_tokens``), and the DataModule offers :meth:`URPODataModule.row_kinds` (the kinds a stage will see, for
the reward check at setup) and :attr:`URPODataModule.counters` (data counts the model logs with every step).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from urpo import metric_keys as keys
from urpo.args import run_seed
from urpo.data.mixture import Cursor, MemoryCursor, Mixer, StreamCursor, kind_quotas, normalised_shares
from urpo.data.schema import ROW_KINDS, Row, RowKind
from urpo.data.sources import OnBadRow, SkipReport, SourceSpec, iter_source, load_source
from urpo.errors import ConfigError

PromptOverflow = Literal["drop", "truncate"]


class PromptModel(Protocol):
    """What the DataModule needs of the model it feeds (``trainer.lightning_module``; URPOModule is one)."""

    tokenizer: Any
    """The model's tokenizer: prompts are measured (and truncated) in its tokens."""

    def prompt_text(self, row: Row) -> str:
        """The text ``row`` is rendered to for training (the player's or the referee's chat prompt, templated)."""
        ...


class RowBatch(list):
    """A list of rows that also carries the data position reached once it is consumed (for exact resume).

    ``quotas``, when set, is how many rows of each kind to train on: the batch was over-sampled for DAPO's dynamic
    sampling (``URPODataModule(oversample=...)``) and the module keeps that many groups of each kind.
    """

    def __init__(self, rows: Sequence[Row], state: Mapping[str, Any], quotas: Mapping[str, int] | None = None) -> None:
        super().__init__(rows)
        self.state = state
        self.quotas = dict(quotas) if quotas is not None else None


class _BatchStream(IterableDataset):
    def __init__(self, datamodule: URPODataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[RowBatch]:
        mixer = self.datamodule.mixer
        limit = self.datamodule.batches_per_epoch
        keep = self.datamodule.quotas if self.datamodule.oversample > 1 else None
        start = mixer.batches
        while limit is None or mixer.batches - start < limit:
            rows = mixer.next_batch()
            if self.datamodule.skips.total:  # streamed sources skip bad records as they are read: log the count
                self.datamodule.counters[keys.SKIPPED_RECORDS] = float(self.datamodule.skips.total)
            yield RowBatch(rows, mixer.state_dict(), keep)


class URPODataModule(L.LightningDataModule):
    """Mixes verifiable, preference and open rows into batches with an exact share of each kind.

    In-memory sources are shuffled with the run's seed, ``seed_everything`` (:func:`urpo.args.run_seed`), read when
    the DataModule is built; a checkpoint keeps the position reached, so a resumed run continues the same order.

    Args:
        sources: training sources (file or hub dataset, adapter, weight within its kind).
        mixture: share of each kind in every batch, e.g. ``{verifiable: 0.4, preference: 0.3, open: 0.3}``; kinds
            absent from it get no rows. Default: an equal share for every kind that has a source.
        batch_size: prompts (rows) per batch on each rank; each is sampled ``num_generations`` times.
        val_sources: held-out sources for validation, per kind.
        test_sources: sources for ``urpo test`` (e.g. a held-out preference set to measure the referee).
        eval_batch_size: rows per validation / test batch.
        batches_per_epoch: length of a training epoch in batches (None: an endless stream; stop with max_steps).
        max_prompt_tokens: rows whose rendered prompt is longer are dropped or truncated (None: no limit).
        prompt_overflow: 'drop' the over-long rows, or 'truncate' their prompt text (keeping its end, where the
            question and the latest turns are); preference rows whose responses alone overflow are dropped.
        on_bad_row: 'error' stops at the first bad record naming file, line and field; 'skip' skips and counts them.
        oversample: DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476): draw this many times the rows of
            each kind per batch (rounded up), roll them all out and score them, then train on ``batch_size`` rows
            in the exact ``mixture`` shares, preferring groups whose rewards are not all equal (those have zero
            advantage and no gradient). 1.0 turns it off. See :mod:`urpo.dynamic_sampling`.
    """

    def __init__(
        self,
        sources: list[SourceSpec],
        mixture: dict[RowKind, float] | None = None,
        batch_size: int = 8,
        val_sources: list[SourceSpec] | None = None,
        test_sources: list[SourceSpec] | None = None,
        eval_batch_size: int = 8,
        batches_per_epoch: int | None = None,
        max_prompt_tokens: int | None = None,
        prompt_overflow: PromptOverflow = "drop",
        on_bad_row: OnBadRow = "error",
        oversample: float = 1.0,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("data.sources: at least one training source is needed")
        if not oversample >= 1.0:  # also refuses NaN
            raise ConfigError(f"data.oversample must be >= 1 (1: no dynamic sampling), got {oversample}")
        self.sources, self.val_sources, self.test_sources = (
            list(sources),
            list(val_sources or []),
            list(test_sources or []),
        )
        self.batch_size, self.eval_batch_size, self.batches_per_epoch = batch_size, eval_batch_size, batches_per_epoch
        self.max_prompt_tokens, self.prompt_overflow = max_prompt_tokens, prompt_overflow
        self.on_bad_row = on_bad_row
        self.seed = run_seed()
        """Seeds the shuffles of in-memory sources: the run's seed, ``seed_everything`` (:func:`urpo.args.run_seed`)."""
        kinds = {s.kind for s in self.sources} if all(s.kind for s in self.sources) else set(ROW_KINDS)
        self.mixture = dict(mixture) if mixture is not None else {k: 1.0 for k in ROW_KINDS if k in kinds}
        self.quotas = kind_quotas(self.mixture, batch_size)
        """Rows of each kind trained on per batch."""
        self.oversample = float(oversample)
        self.draw_quotas = {k: math.ceil(q * self.oversample - 1e-9) for k, q in self.quotas.items()}
        """Rows of each kind drawn per batch: ``quotas`` scaled by ``oversample``, rounded up."""
        rescaled = normalised_shares(self.mixture)
        if rescaled is not None:
            warnings.warn(
                f"data.mixture {self.mixture} sums to {sum(v for v in self.mixture.values() if v > 0):g}, not 1: "
                f"batches get the shares {rescaled} ({self.quotas} rows of batch_size {batch_size})",
                stacklevel=2,
            )
        self.mixer: Mixer | None = None
        self.skips = SkipReport()
        self.counters: dict[str, float] = {}
        """Data counts (rows dropped or truncated by ``max_prompt_tokens``, skipped records); the model logs them
        with every training step."""
        self._pending_state: Mapping[str, Any] | None = None
        self._eval_rows: dict[str, list[Row]] = {}

    def row_kinds(self, stage: str | None) -> set[str]:
        """The row kinds ``stage`` will train or evaluate on: the mixture's kinds for fit, the rows' kinds otherwise
        (the held-out rows must have been read: call after :meth:`setup`)."""
        kinds: set[str] = set(self.quotas) if stage in (None, "fit") else set()
        split = {"validate": "val", "test": "test"}.get(stage or "")
        for name, rows in self._eval_rows.items():
            if split is None or name == split:
                kinds |= {row.kind for row in rows}
        return kinds

    # ---- setup ---------------------------------------------------------------------------------------------------

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.mixer is None:
            self.mixer = self._build_mixer()
            if self._pending_state is not None:
                self.mixer.load_state_dict(self._pending_state)
        if stage in (None, "fit", "validate"):
            self._eval_rows.setdefault("val", self._load_eval(self.val_sources))
        if stage in (None, "test"):
            self._eval_rows.setdefault("test", self._load_eval(self.test_sources))
        if self.skips.total:
            print(f"urpo data: {self.skips.summary()}")

    def _build_mixer(self) -> Mixer:
        rank, world = self._rank()
        cursors: dict[RowKind, list[tuple[float, Cursor]]] = {}
        for number, spec in enumerate(self.sources):
            for kind, cursor in self._cursors(spec, number, rank, world):
                if kind in self.quotas:
                    cursors.setdefault(kind, []).append((spec.weight, cursor))
        transform = self._fit_prompt if self.max_prompt_tokens is not None else None
        self._warn_small_kinds(cursors)
        return Mixer(cursors, self.draw_quotas, transform=transform)

    def _warn_small_kinds(self, cursors: Mapping[RowKind, Sequence[tuple[float, Cursor]]]) -> None:
        """A kind with fewer rows in memory than its rows per batch repeats the same rows in every batch."""
        for kind, pairs in cursors.items():
            if not all(isinstance(c, MemoryCursor) for _, c in pairs):
                continue  # a streamed source's length is not known
            rows = sum(len(c.rows) for _, c in pairs)
            if rows < self.quotas.get(kind, 0):
                warnings.warn(
                    f"data: {kind} sources hold {rows} row(s) (this rank), fewer than the {self.quotas[kind]} {kind} "
                    "rows of every batch: each batch repeats the same rows; add rows or lower batch_size/mixture",
                    stacklevel=2,
                )

    def _cursors(self, spec: SourceSpec, number: int, rank: int, world: int) -> list[tuple[RowKind, Cursor]]:
        """One cursor per kind the source holds (a ``generic`` source may hold all three)."""
        if spec.streaming:
            if spec.kind is None:
                raise ConfigError(
                    f"data: {spec.name}: a 'generic' source cannot stream; its kinds must be known up front"
                )
            return [(spec.kind, StreamCursor(lambda start: self._stream(spec, rank, world, start)))]
        rows, report = load_source(spec, self.on_bad_row, rank, world)
        self.skips.merge(report)
        if self.max_prompt_tokens is not None:
            rows = [r for r in (self._fit_prompt(row) for row in rows) if r is not None]
            if not rows:
                raise ConfigError(f"data: every row of {spec.name} is longer than max_prompt_tokens")
        by_kind: dict[RowKind, list[Row]] = {}
        for row in rows:
            by_kind.setdefault(row.kind, []).append(row)
        return [(kind, MemoryCursor(kind_rows, seed=self.seed * 1000 + number)) for kind, kind_rows in by_kind.items()]

    def _stream(self, spec: SourceSpec, rank: int, world: int, start: int) -> Iterator[Row]:
        return iter_source(spec, self.on_bad_row, rank, world, start, report=self.skips)

    def _load_eval(self, specs: Sequence[SourceSpec]) -> list[Row]:
        rank, world = self._rank()
        rows: list[Row] = []
        for spec in specs:
            loaded, report = load_source(spec, self.on_bad_row, rank, world)
            self.skips.merge(report)
            rows.extend(loaded)
        return rows

    # ---- prompt length -------------------------------------------------------------------------------------------

    def _fit_prompt(self, row: Row) -> Row | None:
        """The row if its rendered prompt fits ``max_prompt_tokens``; truncated or None (counted) if it does not."""
        overflow = self._prompt_tokens(row) - self.max_prompt_tokens
        if overflow <= 0:
            return row
        if self.prompt_overflow == "truncate":
            truncated = self._truncate(row, overflow)
            if truncated is not None:
                self._count(keys.truncated_prompts(row.kind))
                return truncated
        self._count(keys.dropped_prompts(row.kind))
        return None

    def _truncate(self, row: Row, overflow: int) -> Row | None:
        tokenizer = self._model().tokenizer
        ids = tokenizer(row.prompt, add_special_tokens=False)["input_ids"]
        if overflow >= len(ids):
            return None
        shorter = dataclasses.replace(row, prompt=tokenizer.decode(ids[overflow:]))
        return shorter if self._prompt_tokens(shorter) <= self.max_prompt_tokens else None

    def _prompt_tokens(self, row: Row) -> int:
        model = self._model()
        return len(model.tokenizer(model.prompt_text(row), add_special_tokens=False)["input_ids"])

    def _model(self) -> PromptModel:
        return self.trainer.lightning_module

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0.0) + 1.0

    # ---- loaders and state ---------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        # Every new iterator of a DataLoader draws a worker base seed from its generator. With the default (the
        # global RNG) the iterator a resumed run creates after the checkpoint's RNG state was restored would shift
        # every later sample; a private generator leaves the global stream as the straight run has it.
        return DataLoader(_BatchStream(self), batch_size=None, collate_fn=_identity, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader | list:
        rows = self._eval_rows.get(split, [])
        if not rows:
            return []
        chunks = [rows[i : i + self.eval_batch_size] for i in range(0, len(rows), self.eval_batch_size)]
        return DataLoader(chunks, batch_size=None, collate_fn=_identity)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, RowBatch) and self.trainer is not None and self.trainer.training:
            self._consumed_state = batch.state  # the position once this batch is trained on
        return batch

    def _source_names(self) -> list[str]:
        # What a saved data position belongs to: adapter and file name of each source, in order (not the folder,
        # so a run whose data moved still resumes).
        return [f"{spec.adapter}:{Path(str(spec.name)).name}" for spec in self.sources]

    def state_dict(self) -> dict[str, Any]:
        state = getattr(self, "_consumed_state", None)
        if state is None:
            return {}
        return {"mixer": state, "counters": dict(self.counters), "sources": self._source_names()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = state_dict.get("sources")  # absent in checkpoints written before it was recorded
        if saved is not None and saved != self._source_names():
            raise ConfigError(
                f"data: the checkpoint's data position was saved for sources {saved}, but data.sources is now "
                f"{self._source_names()}; restore those sources to resume, or start a new run (no --ckpt_path)"
            )
        self.counters = dict(state_dict.get("counters", {}))
        self._pending_state = state_dict["mixer"]
        self._consumed_state = state_dict["mixer"]
        if self.mixer is not None:
            self.mixer.load_state_dict(self._pending_state)


def _identity(batch: Any) -> Any:
    return batch
