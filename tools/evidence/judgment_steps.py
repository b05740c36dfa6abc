"""Which step of a warm start's judgment fails: ``python -m tools.evidence.judgment_steps WARM_DIR [WARM_DIR ...]``.

The warm start's referee writes its judgment in three steps (:func:`tools.evidence.warm_start.judge_target`): its own
answer, a ``yes`` / ``no`` check of each shown candidate against that answer, and a ranking. A judge at chance can
fail at any of them. This scores each step on the world's ``check`` problems (which no warm start trains on), from
the model's greedy judgment of every problem shown with one right and one wrong candidate:

* ``own_right``: its own answer is the truth;
* ``copies_right``: the two candidates it copied into its checks are the two shown, in the order shown;
* ``checks_consistent``: its two checks say ``yes`` exactly where the candidate it copied equals its own answer;
* ``reasoning_right``: all three of the above (its checks then name the right candidate);
* ``verdict_follows_checks``: with exactly one ``yes``, the ranking puts that candidate on top;
* ``verdict_right``: the ranking puts the right candidate on top;
* ``parsed``: the judgment has all three steps in the expected form (the shares above are of all problems).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tools.evidence` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.world import REFEREE
from urpo.verdict import ParsedRanking

BOXED = re.compile(r"\\boxed\{(-?\d+)\}")
CHECK = re.compile(r"\b(yes|no)\b")


@dataclass(frozen=True)
class Judgment:
    """A parsed judgment: the referee's own answer, the candidates it copied, its checks and its top label."""

    own: int
    copied: tuple[int, int]
    checks: tuple[str, str]
    top: str


def read_judgment(text: str) -> Judgment | None:
    """The three steps of a pair's judgment (``\\boxed{12} \\boxed{14} no \\boxed{12} yes <ranking>B > A</ranking>``);
    None when a step is missing."""
    numbers, checks, verdict = BOXED.findall(text), CHECK.findall(text), REFEREE.parse(text, 2)
    if len(numbers) < 3 or len(checks) != 2 or not isinstance(verdict, ParsedRanking):
        return None
    own, first, second = (int(n) for n in numbers[:3])
    return Judgment(own, (first, second), (checks[0], checks[1]), REFEREE.labels(2)[verdict.tiers[0][0]])


STEPS = (
    "parsed",
    "own_right",
    "copies_right",
    "checks_consistent",
    "reasoning_right",
    "verdict_follows_checks",
    "verdict_right",
)
"""The scores :func:`score_steps` returns, in the order a judgment takes its steps."""


def score_steps(
    judgments: Sequence[Judgment | None],
    truths: Sequence[int],
    shown: Sequence[tuple[int, int]],
    right_labels: Sequence[str],
) -> dict[str, float]:
    """Shares of problems whose judgment got each step right (see the module's docstring)."""
    counts = dict.fromkeys(STEPS, 0)
    for judgment, truth, pair, right in zip(judgments, truths, shown, right_labels):
        if judgment is None:
            continue
        counts["parsed"] += 1
        counts["own_right"] += judgment.own == truth
        counts["copies_right"] += judgment.copied == tuple(pair)
        expected = tuple("yes" if value == judgment.own else "no" for value in judgment.copied)
        counts["checks_consistent"] += judgment.checks == expected
        counts["reasoning_right"] += (
            judgment.own == truth and judgment.copied == tuple(pair) and judgment.checks == expected
        )
        if judgment.checks.count("yes") == 1:
            counts["verdict_follows_checks"] += judgment.top == "AB"[judgment.checks.index("yes")]
        counts["verdict_right"] += judgment.top == right
    return {k: v / max(len(judgments), 1) for k, v in counts.items()}


def judgment_steps(folder: Path, problems: int = 120) -> dict[str, float]:
    """The step scores of the warm start saved in ``folder`` on the first ``problems`` check problems."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.evidence.evaluate import ARITHMETIC
    from tools.evidence.warm_start import judge_example
    from tools.evidence.world import WorldConfig, split_problems
    from urpo.engines.hf_engine import complete
    from urpo.prompts import render_chat

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    pool = split_problems(WorldConfig()).get("check")[:problems]
    rng = random.Random("judgment-steps")  # the same shown pairs for every model
    shown = [judge_example(problem, 0.0, rng) for problem in pool]  # targets: the right candidate on top
    texts = complete(
        model, tokenizer, [render_chat(tokenizer, messages) for messages, _ in shown], ARITHMETIC.judgment_tokens
    )
    targets = [read_judgment(target) for _, target in shown]  # the right candidate on top
    return score_steps(
        [read_judgment(t) for t in texts],
        [p.truth for p in pool],
        [t.copied for t in targets],
        [t.top for t in targets],
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="warm start folders (a run's work folder: warm_start_*)")
    parser.add_argument("--problems", type=int, default=120, help="check problems to judge (default: 120)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    scores = {str(folder): judgment_steps(folder, args.problems) for folder in args.folders}
    print("| Warm start | " + " | ".join(STEPS) + " |")
    print("|---|" + "---|" * len(STEPS))
    for folder, row in scores.items():
        print(f"| {folder} | " + " | ".join(f"{100 * row[k]:.1f}" for k in STEPS) + " |")
    return scores


if __name__ == "__main__":
    main()
