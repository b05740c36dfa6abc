"""Regenerate the `urpo plan` blocks of docs/scaling.md from the current code.

    python tools/plan_docs.py            # rewrites docs/scaling.md in place
    python tools/plan_docs.py --check    # exit 1 when a block differs from what urpo plan prints now

A block starts with ``<!-- generated: urpo plan ARGS -->`` and ends with ``<!-- end generated -->``; between them go
the run description, the table and the verdict lines that ``urpo plan ARGS`` prints, so the numbers in the docs are
never written by hand.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from contextlib import redirect_stdout, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/scaling.md"
BLOCK = re.compile(r"(<!-- generated: urpo plan (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def plan_output(args: list[str]) -> str:
    """What ``urpo plan ARGS`` prints (run from the repository root), whatever its verdict."""
    from urpo.plan.report import main

    buffer = io.StringIO()
    with redirect_stdout(buffer), suppress(SystemExit):  # a verdict of DOES NOT FIT exits 1
        main(args)
    return buffer.getvalue()


def render_block(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip() and not line.startswith("urpo plan:")]
    head = [line for line in lines if line.startswith(("model:", "run:", "step:", "judge:"))]
    table = [line for line in lines if line.startswith("|")]
    tail = [line for line in lines if line not in head and line not in table]
    return (
        "```text\n" + "\n".join(head) + "\n```\n\n" + "\n".join(table) + "\n\n```text\n" + "\n".join(tail) + "\n```\n"
    )


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(plan_output(m.group("args").split())) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    import os

    os.chdir(ROOT)  # the config paths in the blocks are relative to the repository root
    text = DOC.read_text()
    new = regenerate(text)
    if args.check:
        return int(new != text)
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
