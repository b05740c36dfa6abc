"""Reading fields of native records: typed getters that fail with a DataError naming source, row and field."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from urpo.errors import DataError


class Where(NamedTuple):
    """Where a record came from, so every failure can name it."""

    source: str
    index: int

    def fail(self, field: str | None, message: str) -> DataError:
        return DataError(message, source=self.source, row=self.index, field=field)


def as_record(record: Any, where: Where) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise where.fail(None, f"record must be a JSON object, got {type(record).__name__}")
    return record


def need(record: Mapping[str, Any], key: str, where: Where, field: str | None = None) -> Any:
    if record.get(key) is None:
        raise where.fail(field or key, "missing field" if key not in record else "field is null")
    return record[key]


def short(value: Any) -> str:
    """A repr short enough for an error message, even for a megabyte of text."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def as_text(value: Any, where: Where, field: str) -> str:
    if not isinstance(value, str):
        raise where.fail(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise where.fail(field, "text is empty")
    return value.strip()


def field_text(record: Mapping[str, Any], key: str, where: Where, field: str | None = None) -> str:
    return as_text(need(record, key, where, field), where, field or key)


def optional_text(record: Mapping[str, Any], key: str, where: Where) -> str | None:
    """An optional text field: absent, null or blank all mean "not given"."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return as_text(value, where, key)


def as_number(value: Any, where: Where, field: str) -> float:
    # bool is an int subclass; a True score is a schema mix-up, not the number 1. numbers.Real admits numpy scalars.
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise where.fail(field, f"expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise where.fail(field, f"expected a number, got {short(value)}") from None
    if not math.isfinite(number):
        raise where.fail(field, f"expected a finite number, got {short(value)}")
    return number


def answer_text(value: Any, where: Where, field: str) -> str:
    """A gold answer: text, or a plain JSON number written out as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # past Python's int-to-text digit limit
            raise where.fail(field, "answer number is too long") from None
    if isinstance(value, float):
        return str(as_number(value, where, field))
    return as_text(value, where, field)


def as_list(value: Any, where: Where, field: str) -> Sequence[Any]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise where.fail(field, f"expected a list, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- conversations

_ROLE_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}


def render_conversation(turns: Sequence[tuple[str, str]]) -> str:
    """Render ``(role, text)`` turns as a prompt: a lone user turn as itself, more as a labelled transcript."""
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n\n".join(f"{_ROLE_LABELS[role]}: {text}" for role, text in turns)


def message_turns(messages: Any, where: Where, field: str) -> list[tuple[str, str]]:
    turns = []
    for i, message in enumerate(as_list(messages, where, field)):
        if not isinstance(message, Mapping):
            raise where.fail(f"{field}[{i}]", "message must be an object with 'role' and 'content'")
        role = need(message, "role", where, f"{field}[{i}].role")
        if not isinstance(role, str) or role not in _ROLE_LABELS:
            raise where.fail(f"{field}[{i}].role", f"role must be one of {sorted(_ROLE_LABELS)}, got {short(role)}")
        turns.append((role, field_text(message, "content", where, f"{field}[{i}].content")))
    if not turns:
        raise where.fail(field, "conversation has no messages")
    return turns
