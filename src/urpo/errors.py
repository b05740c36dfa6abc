"""The project's own error types: every bad input surfaces as one of these, naming where it came from."""

from __future__ import annotations


class URPOError(Exception):
    """Base class of every error urpo raises on purpose."""


class DataError(URPOError, ValueError):
    """A data record, file or source that cannot be used.

    The message always names the source (file or hub id), the line or row, and the field at fault.
    """

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None, field: str | None = None):
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        self.source, self.row, self.field = source, row, field
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(URPOError, ValueError):
    """A configuration that cannot work (missing model path, inconsistent options)."""


class RewardError(URPOError, RuntimeError):
    """A reward callback returned something the loss cannot use (wrong type or shape, an infinite reward)."""


class StalledRunError(URPOError, RuntimeError):
    """Training made no optimizer step for several batches in a row (no usable reward, or no finite gradient)."""
