"""Finding the final answer of a solution in LaTeX: the content of its last ``\\boxed{}``."""

from __future__ import annotations

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced, ``\\{`` skipped) in ``text``.

    Also reads the brace-less ``\\boxed 5`` form up to ``$`` or end of line. Returns None when there is no box;
    raises ``ValueError`` when the last box never closes.
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    body = rest.lstrip()
    if not body.startswith("{"):
        if not rest[:1].isspace():
            return None
        # MATH writes a few answers brace-less, as "\boxed 5$".
        return re.split(r"[$\n]", body, maxsplit=1)[0].strip() or None
    depth, i = 0, 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            i += 2  # an escaped brace is a literal brace, not nesting
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return body[1:i].strip()
        i += 1
    raise ValueError("unbalanced braces in the last \\boxed{...}")
