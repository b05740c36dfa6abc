"""The referee's verdict: its labels, its tags, and the total parser that reads it back.

A referee ends its reply with ``<ranking>C > A > B</ranking>`` (tags configurable, ``=`` for ties where allowed).
:func:`parse_ranking` reads that block from any completion without ever raising, passing over blocks the model
merely copied from its prompt (:func:`is_echo`), and :func:`to_original` maps the presentation positions back
through the shuffle the prompt was shown in. :mod:`urpo.referee` renders the prompt this verdict answers and
re-exports the parser and its result types.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from urpo.ranking import Tiers

MAX_LABELS = 26
"""Responses are labelled A..Z, so one judgment shows at most 26."""
PARSE_TAIL_CHARS = 65_536
"""The parser reads only this many trailing characters: the verdict comes last, and huge outputs stay cheap."""
MAX_BLOCK_CHARS = 4_096
"""Longest ranking block the parser tokenises; 26 labels with separators and spacing fit many times over."""

ParseFailureReason = Literal[
    "no_ranking", "empty", "bad_token", "label_out_of_range", "duplicate_label", "missing_label", "tie_not_allowed"
]
PARSE_FAILURE_REASONS: tuple[ParseFailureReason, ...] = get_args(ParseFailureReason)


@dataclass(frozen=True)
class ParsedRanking:
    """A well-formed verdict: every presentation position ranked exactly once."""

    tiers: Tiers
    """Presentation positions (A=0, B=1, ...) grouped by tier, best tier first; sorted within a tier."""


@dataclass(frozen=True)
class ParseFailure:
    """Why a completion holds no usable ranking."""

    reason: ParseFailureReason
    """The kind of failure, one of :data:`PARSE_FAILURE_REASONS`."""
    detail: str
    """A human-readable explanation naming the offending token or labels."""


def label_names(n: int) -> list[str]:
    """The labels of ``n`` responses: A, B, C, ..."""
    if not 0 <= n <= MAX_LABELS:
        raise ValueError(f"can label 0..{MAX_LABELS} responses, got {n}")
    return [chr(ord("A") + i) for i in range(n)]


def spoken_list(names: Sequence[str]) -> str:
    """``names`` as a sentence reads them: "A, B and C"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# Full-width and small-form brackets read like the ASCII ones, so tags built from them are neutralised too.
LOOKALIKES = {"<": "<\uff1c\ufe64", ">": ">\uff1e\ufe65", "/": "/\uff0f", "[": "[\uff3b", "]": "]\uff3d"}


def tag_regex(tag: str, lookalikes: bool) -> str:
    """A pattern for ``tag`` that tolerates whitespace between its word and punctuation pieces."""
    pieces = re.findall(r"\w+|\S", tag)
    return r"\s*".join(
        f"[{re.escape(LOOKALIKES[p])}]" if lookalikes and p in LOOKALIKES else re.escape(p) for p in pieces
    )


@functools.lru_cache(maxsize=32)
def tag_patterns(open_tag: str, close_tag: str, lookalikes: bool) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Case-insensitive patterns of the opening and closing tag (with ``lookalikes``, their full-width forms too)."""
    opener, closer = (re.compile(tag_regex(tag, lookalikes), re.IGNORECASE) for tag in (open_tag, close_tag))
    return opener, closer


def check_permutation(order: Sequence[int], n: int) -> None:
    """Raises ``ValueError`` unless ``order`` is a permutation of ``range(n)``."""
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {list(order)!r}")


_TOKEN = re.compile(r"\w+|\S")


def parse_ranking(
    text: str,
    n: int,
    allow_ties: bool = False,
    open_tag: str = "<ranking>",
    close_tag: str = "</ranking>",
    prompt: str | None = None,
    prefilled: bool = False,
) -> ParsedRanking | ParseFailure:
    """Reads the final ranking of ``n`` labels from a referee's completion; never raises on any completion.

    The last complete block wins: the last opening tag before a closing tag, up to the first closing tag after
    it. With ``prompt`` given, blocks that are echoes of the prompt are passed over (see :func:`is_echo`): a
    model that repeats its instructions must not be credited with the example ranking they show. With
    ``prefilled``, ``text`` starts with an opening tag that the prompt wrote into the reply (a template's
    ``response_prefix``): a block opened there holds labels the model wrote itself, so it is never an echo, even
    when the model goes on to copy the text that follows the example in the prompt.
    Tags match in any case and with whitespace between their pieces (``< /RANKING >``). Inside, labels are
    separated by ``>`` (and ``=`` when ``allow_ties``); whitespace is ignored. Lowercase labels are accepted
    (``b > a``): with single letters they are unambiguous, and format compliance is judged by the tags and the
    grammar, not letter case. Only the last :data:`PARSE_TAIL_CHARS` characters are read and blocks over
    :data:`MAX_BLOCK_CHARS` are refused, so the cost is bounded for any input.

    Returns:
        The ranking, or the first problem met reading left to right (missing labels are reported last).

    Raises:
        ValueError: If ``n`` is not in 1..26 (a caller bug, not a bad completion).
    """
    names = label_names(n)
    if n < 1:
        raise ValueError("a ranking needs at least one label")
    if not isinstance(text, str):
        return ParseFailure("no_ranking", f"completion is a {type(text).__name__}, not a str")
    tail = text[-PARSE_TAIL_CHARS:]
    spans = _block_spans(tail, open_tag, close_tag)
    if prompt:
        own = (0,) if prefilled and len(text) <= PARSE_TAIL_CHARS else ()  # the prefilled opener starts the text
        echoed = [span for span in spans if span[0] not in own and is_echo(tail, span, prompt)]
        spans = [span for span in spans if span not in echoed]
        if echoed and not spans:
            return ParseFailure("no_ranking", f"the only {open_tag}...{close_tag} block copies the prompt")
    if not spans:
        return ParseFailure("no_ranking", f"no complete {open_tag}...{close_tag} block")
    content = tail[spans[-1][1] : spans[-1][2]]
    if len(content) > MAX_BLOCK_CHARS:
        return ParseFailure("bad_token", f"ranking block is {len(content)} characters, over {MAX_BLOCK_CHARS}")
    return _parse_tokens(_TOKEN.findall(content), names, allow_ties)


ECHO_CONTEXT_CHARS = 24
"""Characters on each side of a ranking block compared with the prompt to tell an echo from a verdict."""
ECHO_MIN_CONTEXT = 6
"""A side counts as evidence of an echo only with at least this many non-space characters."""


def _block_spans(tail: str, open_tag: str, close_tag: str) -> list[tuple[int, int, int, int]]:
    """Every complete block as ``(open_start, content_start, content_end, close_end)``, in text order.

    A block is the last opening tag before a closing tag, up to the first closing tag after that opening tag, so
    the last span is the block the parser has always read.
    """
    opener, closer = tag_patterns(open_tag, close_tag, False)
    closes = [(m.start(), m.end()) for m in closer.finditer(tail)]
    opens = [(m.start(), m.end()) for m in opener.finditer(tail)]
    close_starts, open_ends = [c[0] for c in closes], [o[1] for o in opens]
    spans: dict[tuple[int, int, int, int], None] = {}  # ordered and de-duplicated
    for close_start in close_starts:
        k = bisect.bisect_right(open_ends, close_start)  # openers that end before this closer starts
        if k == 0:
            continue
        start, content_start = opens[k - 1]
        close = closes[bisect.bisect_left(close_starts, content_start)]
        spans[(start, content_start, close[0], close[1])] = None
    return list(spans)


def is_echo(text: str, span: tuple[int, int, int, int], prompt: str) -> bool:
    """Whether the block at ``span`` of ``text`` is copied from ``prompt`` rather than written as a verdict.

    The block together with the text next to it on either side (up to :data:`ECHO_CONTEXT_CHARS` characters,
    at least :data:`ECHO_MIN_CONTEXT` of them non-space) must occur verbatim in the prompt. A block with no such
    context, e.g. a completion that is just ``<ranking>B > A</ranking>``, is a verdict even when it matches the
    prompt's example: the example is a legal ranking, and a terse answer may well be it.
    """
    start, _, _, end = span
    block = text[start:end]
    before, after = text[max(0, start - ECHO_CONTEXT_CHARS) : start], text[end : end + ECHO_CONTEXT_CHARS]
    if len(before.strip()) >= ECHO_MIN_CONTEXT and before + block in prompt:
        return True
    return len(after.strip()) >= ECHO_MIN_CONTEXT and block + after in prompt


def _parse_tokens(tokens: list[str], names: list[str], allow_ties: bool) -> ParsedRanking | ParseFailure:
    if not tokens:
        return ParseFailure("empty", "the ranking block is empty")
    tiers: list[list[int]] = [[]]
    for i, token in enumerate(tokens):
        shown = repr(token[:40])
        if i % 2 == 0:
            position = ord(token.upper()) - ord("A") if len(token) == 1 and token.isascii() and token.isalpha() else -1
            if position < 0:
                return ParseFailure("bad_token", f"expected a label at token {i + 1}, got {shown}")
            if position >= len(names):
                return ParseFailure("label_out_of_range", f"label {token.upper()} is not one of {spoken_list(names)}")
            if any(position in tier for tier in tiers):
                return ParseFailure("duplicate_label", f"label {token.upper()} is ranked more than once")
            tiers[-1].append(position)
        elif token == ">":
            tiers.append([])
        elif token != "=":
            return ParseFailure("bad_token", f"expected '>' or '=' at token {i + 1}, got {shown}")
        elif not allow_ties:
            return ParseFailure("tie_not_allowed", f"'=' at token {i + 1}, but ties are not allowed")
    if len(tokens) % 2 == 0:
        return ParseFailure("bad_token", f"the ranking ends with the separator {tokens[-1]!r}")
    ranked = {p for tier in tiers for p in tier}
    missing = [name for p, name in enumerate(names) if p not in ranked]
    if missing:
        return ParseFailure("missing_label", f"labels not ranked: {', '.join(missing)}")
    return ParsedRanking(tuple(tuple(sorted(tier)) for tier in tiers))


def to_original(parsed: ParsedRanking, order: Sequence[int]) -> Tiers:
    """Maps a ranking over presentation positions back through ``order`` to original response indices.

    Raises:
        ValueError: If ``order`` is not a permutation or a position lies outside it.
    """
    check_permutation(order, len(order))
    if any(not 0 <= p < len(order) for tier in parsed.tiers for p in tier):
        raise ValueError(f"ranking {parsed.tiers!r} has positions outside an order of {len(order)}")
    return tuple(tuple(sorted(order[p] for p in tier)) for tier in parsed.tiers)


__all__ = [
    "ECHO_CONTEXT_CHARS",
    "ECHO_MIN_CONTEXT",
    "LOOKALIKES",
    "MAX_BLOCK_CHARS",
    "MAX_LABELS",
    "PARSE_FAILURE_REASONS",
    "PARSE_TAIL_CHARS",
    "ParseFailure",
    "ParseFailureReason",
    "ParsedRanking",
    "check_permutation",
    "is_echo",
    "label_names",
    "parse_ranking",
    "spoken_list",
    "tag_patterns",
    "tag_regex",
    "to_original",
]
