"""Sources: read one configured data source into validated rows, whole in memory or as a lazy stream.

A source is a local file (``.jsonl``, ``.jsonl.gz``, ``.json`` holding a list of records, ``.parquet``) or a hub
dataset, read through one adapter of :mod:`urpo.data.formats`.

Indexing and locations: a row's ``index`` is the 0-based *record* index in its source (blank JSONL lines are not
records), the same on every rank. Error messages about a JSONL record also name its 1-based ``line N`` in the file.

Sharding: record ``i`` goes to rank ``i % world_size``, so ranks get disjoint rows whose union is the whole source.
``limit`` and ``start`` count records of the whole source (before sharding and before bad records are skipped), so
every rank agrees on them whatever ``world_size`` is.

Memory: ``.jsonl`` / ``.jsonl.gz`` files are read line by line and ``.parquet`` files batch by batch, and a record
is decoded only when it belongs to this rank, so :func:`iter_source` runs in bounded memory however big the file. A
``.json`` file is one JSON value and is always parsed whole: use JSONL for big data. ``streaming`` matters for hub
datasets (streamed instead of downloaded first) and marks the source for :func:`iter_source` over
:func:`load_source`.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from urpo.data.formats import ADAPTERS, AdapterName
from urpo.data.schema import Row, RowKind
from urpo.errors import ConfigError, DataError

OnBadRow = Literal["error", "skip"]
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass(frozen=True)
class SourceSpec:
    """One data source of the training mix, as written in the YAML config."""

    adapter: AdapterName
    """How to read a native record: one of :data:`urpo.data.formats.ADAPTERS`."""
    path: str | None = None
    """A local ``.jsonl``, ``.jsonl.gz``, ``.json`` (a list of records) or ``.parquet`` file; or give ``hub``."""
    hub: str | None = None
    """A hub dataset id, e.g. ``openai/gsm8k``; or give ``path``."""
    subset: str | None = None
    """The hub dataset's config name, e.g. ``main`` for GSM8K."""
    split: str = "train"
    """The hub dataset's split."""
    weight: float = 1.0
    """Relative share of this source in the training mix (> 0)."""
    limit: int | None = None
    """Read only the first ``limit`` records of the source (None: all)."""
    streaming: bool = False
    """Stream the source lazily instead of holding all its rows in memory."""
    name: str | None = None
    """Display name, used as the rows' ``source`` and in logs and metrics; defaults to ``path`` or ``hub[:split]``."""

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"unknown adapter {self.adapter!r}; choose one of {sorted(ADAPTERS)}")
        if (self.path is None) == (self.hub is None):
            given = f"path={self.path!r}, hub={self.hub!r}"
            raise ConfigError(f"a source needs exactly one of 'path' or 'hub', got {given}")
        if self.path is not None and not self.path.endswith(FILE_SUFFIXES):
            raise ConfigError(f"{self.path}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)}")
        weight_ok = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if not weight_ok or not math.isfinite(self.weight) or self.weight <= 0:
            raise ConfigError(f"source weight must be a finite number > 0, got {self.weight!r}")
        limit_ok = self.limit is None or (isinstance(self.limit, int) and not isinstance(self.limit, bool))
        if not limit_ok or (self.limit is not None and self.limit < 1):
            raise ConfigError(f"source limit must be a positive integer or None, got {self.limit!r}")
        if self.name is None:
            # Frozen dataclass: the default name is filled in once, so every later reader sees a plain string.
            subset = f"[{self.subset}]" if self.subset else ""
            object.__setattr__(self, "name", self.path or f"{self.hub}{subset}:{self.split}")

    @property
    def kind(self) -> RowKind | None:
        """The kind of rows this source yields (None for ``generic``: each record names its kind)."""
        return ADAPTERS[self.adapter].kind


@dataclass
class SkipReport:
    """Bad records skipped under ``on_bad_row="skip"``: how many per source, and the first few reasons."""

    counts: dict[str, int] = field(default_factory=dict)
    """Skipped records per source name."""
    examples: list[str] = field(default_factory=list)
    """The first ``max_examples`` error messages, to show the user what went wrong."""
    max_examples: int = 5
    """How many error messages to keep."""

    @property
    def total(self) -> int:
        """Skipped records over all sources."""
        return sum(self.counts.values())

    def add(self, source: str, error: DataError) -> None:
        """Count one skipped record of ``source``."""
        self.counts[source] = self.counts.get(source, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    def merge(self, other: SkipReport) -> None:
        """Add the counts and examples of another report (e.g. of another source) to this one."""
        for source, count in other.counts.items():
            self.counts[source] = self.counts.get(source, 0) + count
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])

    def summary(self) -> str:
        """One line for the log, e.g. ``skipped 3 bad records (hh: 2, gsm8k: 1); first: ...``."""
        if not self.total:
            return "skipped 0 bad records"
        per_source = ", ".join(f"{source}: {count}" for source, count in self.counts.items())
        return f"skipped {self.total} bad records ({per_source}); first: {self.examples[0]}"


class _Raw(NamedTuple):
    """One record before decoding: JSONL text (decoded only if this rank needs it) or an already decoded record."""

    index: int
    line: int | None
    text: bytes | None
    record: Any = None


def _open_error(path: str, exc: Exception) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError("file not found", source=path)
    return DataError(f"cannot read file: {exc}", source=path)


def _jsonl_records(path: str) -> Iterator[_Raw]:
    opener = gzip.open if path.endswith(".gz") else open
    index = 0
    try:
        # Binary lines: one line that is not UTF-8 is then one bad record, not a broken file.
        with opener(Path(path).expanduser(), "rb") as lines:
            for line_number, text in enumerate(lines, start=1):
                if text.strip():
                    yield _Raw(index, line_number, text)
                    index += 1
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _open_error(path, exc) from exc


def _json_records(path: str) -> Iterator[_Raw]:
    try:
        with open(Path(path).expanduser(), "rb") as file:
            records = json.load(file)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=path) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"invalid JSON: {exc}", source=path) from None
    if not isinstance(records, list):
        raise DataError(f"a .json source must hold a list of records, got {type(records).__name__}", source=path)
    for index, record in enumerate(records):
        yield _Raw(index, None, None, record)


def _parquet_records(path: str, start: int) -> Iterator[_Raw]:
    import pyarrow.parquet as pq  # datasets depends on pyarrow; imported here to keep `import urpo` light

    try:
        parquet = pq.ParquetFile(Path(path).expanduser())
        # Whole row groups before ``start`` are passed over without decoding them.
        first, index = 0, 0
        while first < parquet.num_row_groups and index + parquet.metadata.row_group(first).num_rows <= start:
            index += parquet.metadata.row_group(first).num_rows
            first += 1
        for batch in parquet.iter_batches(batch_size=1024, row_groups=range(first, parquet.num_row_groups)):
            for record in batch.to_pylist():
                yield _Raw(index, None, None, record)
                index += 1
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise _open_error(path, exc) from exc


def _hub_records(spec: SourceSpec, start: int) -> Iterator[_Raw]:
    import datasets  # heavy import, only needed for hub sources

    try:
        dataset = datasets.load_dataset(spec.hub, spec.subset, split=spec.split, streaming=spec.streaming)
    except Exception as exc:  # network, auth, unknown config...: report it as this source's data error
        raise DataError(f"cannot load hub dataset {spec.hub!r}: {exc}", source=spec.name) from exc
    if start:
        # Resume without decoding the records before ``start``.
        total = None if spec.streaming else len(dataset)
        dataset = dataset.skip(start) if total is None else dataset.select(range(min(start, total), total))
    for offset, record in enumerate(dataset):
        yield _Raw(start + offset, None, None, record)


def _raw_records(spec: SourceSpec, start: int) -> Iterator[_Raw]:
    if spec.hub is not None:
        return _hub_records(spec, start)
    path = spec.path
    assert path is not None  # SourceSpec guarantees one of path / hub
    if path.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_records(path)
    if path.endswith(".parquet"):
        return _parquet_records(path, start)
    return _json_records(path)


def _decode(raw: _Raw, path: str | None) -> Any:
    if raw.text is None:
        return raw.record
    where = f"line {raw.line}"
    try:
        # utf-8-sig: a byte-order mark on the first line is not part of the record.
        return json.loads(raw.text.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8", source=path, row=raw.index) from None
    except json.JSONDecodeError as exc:
        message = f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
        raise DataError(message, source=path, row=raw.index) from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply", source=path, row=raw.index) from None


def _check_shard(rank: int, world_size: int, start: int, on_bad_row: str) -> None:
    if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be a record index >= 0, got {start!r}")
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")


def iter_source(
    spec: SourceSpec,
    on_bad_row: OnBadRow = "error",
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
    *,
    report: SkipReport | None = None,
) -> Iterator[Row]:
    """Lazily yield this rank's rows of a source, from record index ``start`` on.

    Args:
        spec: The source to read.
        on_bad_row: ``"error"`` raises the first bad record's DataError; ``"skip"`` passes over bad records and
            counts them in ``report``.
        rank: This process's rank; it gets the records whose index ``i`` has ``i % world_size == rank``.
        world_size: Number of ranks sharing the source.
        start: Resume at this record index (e.g. the last consumed row's ``index + 1``); earlier records are not
            decoded.
        report: Collects skipped records; pass one in to read it after the iteration.

    Yields:
        Validated rows, in source order.

    Raises:
        ConfigError: ``rank`` / ``world_size`` / ``start`` / ``on_bad_row`` cannot work (raised at once).
        DataError: a missing or unreadable file, a bad record with ``on_bad_row="error"``, or, when read from the
            beginning, a source with no valid row for this rank.
    """
    _check_shard(rank, world_size, start, on_bad_row)
    return _iter_rows(spec, on_bad_row, rank, world_size, start, SkipReport() if report is None else report)


def _make_row(raw: _Raw, spec: SourceSpec) -> Row:
    record = _decode(raw, spec.path)
    try:
        return ADAPTERS[spec.adapter].adapter(record, source=str(spec.name), index=raw.index)
    except DataError as error:
        if raw.line is not None:
            # Keep source / row / field on the error and point the reader at the line of the file too.
            error.args = (f"{error.args[0]} (line {raw.line})",)
        raise


def _iter_rows(
    spec: SourceSpec, on_bad_row: OnBadRow, rank: int, world_size: int, start: int, report: SkipReport
) -> Iterator[Row]:
    read = skipped = 0
    for raw in _raw_records(spec, start):
        if spec.limit is not None and raw.index >= spec.limit:
            break  # stop reading: the rest of a big file is never touched
        if raw.index < start or raw.index % world_size != rank:
            continue
        read += 1
        try:
            row = _make_row(raw, spec)
        except DataError as error:
            if on_bad_row == "error":
                raise
            report.add(str(spec.name), error)
            skipped += 1
            continue
        yield row
    if read == skipped and start == 0:
        shard = f" for rank {rank} of {world_size}" if world_size > 1 else ""
        raise DataError(
            f"source has no valid rows{shard} ({read} records read, {skipped} bad ones skipped)", source=spec.name
        )


def load_source(
    spec: SourceSpec, on_bad_row: OnBadRow = "error", rank: int = 0, world_size: int = 1
) -> tuple[list[Row], SkipReport]:
    """Read this rank's rows of a source into memory.

    Args:
        spec: The source to read.
        on_bad_row: ``"error"`` raises on the first bad record; ``"skip"`` skips and counts bad records.
        rank: This process's rank (records ``i`` with ``i % world_size == rank``).
        world_size: Number of ranks sharing the source.

    Returns:
        The rows in source order, and the report of skipped records (empty under ``"error"``).

    Raises:
        DataError: as :func:`iter_source`.
    """
    report = SkipReport()
    rows = list(iter_source(spec, on_bad_row, rank, world_size, report=report))
    return rows, report


__all__ = ["FILE_SUFFIXES", "OnBadRow", "SkipReport", "SourceSpec", "iter_source", "load_source"]
