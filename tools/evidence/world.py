"""A synthetic alignment world with known truth for all three row kinds: small integer arithmetic.

Problems are ``What is a + b?`` and ``What is a - b?`` with a two-digit ``a`` and a one-digit ``b`` (so every answer
digit is a small function of a few input digits, which a tiny model learns in minutes on a CPU, while carries and
borrows leave room for mistakes). The two operations play different roles, as math and chat do in the paper's mix:

* ``verifiable`` rows are additions, with their answer (rule-checked by :class:`~urpo.rewards.MathVerifier`);
* ``open`` rows are subtractions given WITHOUT their answer; the truth is kept aside and used only for evaluation;
* ``preference`` rows show a problem of either operation with N candidate answers; the gold utility of a candidate
  is minus its distance to the truth (so the correct answer is best, near misses beat far ones).

Every problem belongs to exactly one pool (:class:`Split`): ``heldout`` (evaluation only), ``check`` (the warm
start's gate: it must reach its targets on these before RL starts), ``warm`` (the supervised warm start),
``rl_solve`` (verifiable and open rows of RL) or ``rl_judge`` (preference rows of RL). So no problem the trainer
solves or judges is ever scored, and open rows' answers never appear in any preference row.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from urpo.boxed import last_boxed
from urpo.prompts import PlayerTemplate
from urpo.referee import RefereeTemplate

VERIFIABLE_OP = "+"
OPEN_OP = "-"
DISTRACTOR_OFFSETS = (-10, -3, -2, -1, 1, 2, 3, 10)
"""Wrong candidates are the truth plus one of these: near misses (an off-by-one) and tens-digit slips."""

PLAYER = PlayerTemplate(system=None, verifiable_suffix="", open_suffix="")
"""Both kinds are asked the same way; the warm start teaches the ``\\boxed{}`` answer format."""
REFEREE = RefereeTemplate(
    system=None,
    instruction="Solve the problem, then rank the {n} answers, best first.",
    reminder=None,
    show_reference=False,
)
"""A short judging prompt (the tiny model's context and the CPU budget are small); same tags and parser as the default.
The referee reasons first, here by solving the problem itself, then gives its ranking."""


@dataclass(frozen=True, order=True)
class Problem:
    """One arithmetic problem and its true answer."""

    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def truth(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b


def boxed(value: int) -> str:
    """The answer format the player is taught and the verifier reads."""
    return f"\\boxed{{{value}}}"


def answer_of(text: str) -> int | None:
    """The integer in the last ``\\boxed{}`` (surrounding spaces allowed), or None: how this world reads an answer."""
    try:
        content = last_boxed(text)
    except ValueError:
        return None
    content = content.strip() if content is not None else None
    return int(content) if content and content.isdigit() else None


def all_problems(op: str, cfg: WorldConfig) -> list[Problem]:
    """Every problem of one operation: ``a`` in ``[10, cfg.max_a)``, ``b`` in ``[1, cfg.max_b)``."""
    return [Problem(a, op, b) for a in range(10, cfg.max_a) for b in range(1, cfg.max_b)]


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world; the defaults are what ``tools/evidence/run.py`` uses."""

    max_a: int = 100
    """The first operand is in ``[10, max_a)`` (two digits)."""
    max_b: int = 10
    """The second operand is in ``[1, max_b)``."""
    heldout: int = 120
    """Held-out problems per operation (scored, never trained on)."""
    check: int = 60
    """Problems per operation that only the warm start's gate scores (never trained on, never in the table)."""
    warm_share: float = 0.4
    """Share of the remaining problems of each operation given to the supervised warm start."""
    judge_share: float = 0.3
    """Share of the remaining problems of each operation used for RL preference rows (the rest: RL solve rows)."""
    num_responses: int = 2
    """N: candidate answers per preference row (2: RewardBench-style pairs)."""
    correct_share: float = 1.0
    """Share of preference rows that include the correct answer (the others compare two wrong ones)."""
    seed: int = 0
    """Seeds the pools and the candidates; the same for every training seed (one world, many runs)."""


POOLS = ("heldout", "check", "warm", "rl_solve", "rl_judge")


@dataclass
class Split:
    """The problems of each pool, per operation."""

    pools: dict[str, dict[str, list[Problem]]] = field(default_factory=dict)
    """``pools[pool][op]``; pools are ``heldout``, ``check``, ``warm``, ``rl_solve``, ``rl_judge``."""

    def get(self, pool: str, op: str | None = None) -> list[Problem]:
        ops = [op] if op else sorted(self.pools[pool])
        return [p for o in ops for p in self.pools[pool][o]]


def split_problems(cfg: WorldConfig) -> Split:
    """Partitions every operation's problems into the four pools (disjoint, deterministic in ``cfg.seed``)."""
    rng = random.Random(f"world:{cfg.seed}")
    split = Split({name: {} for name in POOLS})
    for op in (VERIFIABLE_OP, OPEN_OP):
        problems = all_problems(op, cfg)
        rng.shuffle(problems)
        held, rest = problems[: cfg.heldout], problems[cfg.heldout :]
        split.pools["check"][op], rest = rest[: cfg.check], rest[cfg.check :]
        n_warm = round(len(rest) * cfg.warm_share)
        n_judge = round(len(rest) * cfg.judge_share)
        split.pools["heldout"][op] = held
        split.pools["warm"][op] = rest[:n_warm]
        split.pools["rl_judge"][op] = rest[n_warm : n_warm + n_judge]
        split.pools["rl_solve"][op] = rest[n_warm + n_judge :]
    return split


def candidates(problem: Problem, n: int, with_correct: bool, rng: random.Random) -> list[int]:
    """``n`` distinct candidate answers (non-negative), in random order; the truth among them if ``with_correct``."""
    wrong = [problem.truth + d for d in DISTRACTOR_OFFSETS if problem.truth + d >= 0]
    picked = rng.sample(wrong, n - 1 if with_correct else n)
    values = picked + ([problem.truth] if with_correct else [])
    rng.shuffle(values)
    return values


def utilities(problem: Problem, values: Sequence[int]) -> list[float]:
    """Gold utility of each candidate: minus its distance to the truth (the correct answer scores 0, the best)."""
    return [-float(abs(v - problem.truth)) for v in values]


def preference_record(problem: Problem, values: Sequence[int]) -> dict:
    """A ``generic``-adapter preference record with gold scores."""
    return {
        "kind": "preference",
        "prompt": problem.prompt,
        "responses": [boxed(v) for v in values],
        "scores": utilities(problem, values),
    }


def preference_records(problems: Sequence[Problem], cfg: WorldConfig, rng: random.Random) -> Iterator[dict]:
    """One preference record per problem; candidates with tied gold (all equally far) are redrawn."""
    for problem in problems:
        while True:
            values = candidates(problem, cfg.num_responses, rng.random() < cfg.correct_share, rng)
            if len(set(utilities(problem, values))) > 1:
                break
        yield preference_record(problem, values)


def verifiable_record(problem: Problem) -> dict:
    return {"kind": "verifiable", "prompt": problem.prompt, "answer": str(problem.truth)}


def open_record(problem: Problem) -> dict:
    """An open row: the prompt only. The truth is NOT in the record (see :func:`write_world`)."""
    return {"kind": "open", "prompt": problem.prompt}


def truth_record(problem: Problem) -> dict:
    return {"prompt": problem.prompt, "truth": problem.truth, "op": problem.op}


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_world(folder: Path, cfg: WorldConfig = WorldConfig()) -> dict[str, Path]:
    """Writes the world's files; returns their paths by name.

    ``train.jsonl`` is all the RL trainer sees (verifiable with answers, preference with gold scores, open without
    answers). ``eval_*.jsonl`` and ``truth_open_train.jsonl`` are for evaluation only.
    """
    split, rng = split_problems(cfg), random.Random(f"rows:{cfg.seed}")
    train = [verifiable_record(p) for p in split.get("rl_solve", VERIFIABLE_OP)]
    train += [open_record(p) for p in split.get("rl_solve", OPEN_OP)]
    train += list(preference_records(split.get("rl_judge"), cfg, rng))
    files = {
        "train": write_jsonl(folder / "train.jsonl", train),
        "truth_open_train": write_jsonl(
            folder / "truth_open_train.jsonl", [truth_record(p) for p in split.get("rl_solve", OPEN_OP)]
        ),
        "eval_open": write_jsonl(folder / "eval_open.jsonl", [truth_record(p) for p in split.get("heldout", OPEN_OP)]),
        "eval_verifiable": write_jsonl(
            folder / "eval_verifiable.jsonl", [truth_record(p) for p in split.get("heldout", VERIFIABLE_OP)]
        ),
        "eval_preference": write_jsonl(
            folder / "eval_preference.jsonl", list(preference_records(split.get("heldout"), cfg, rng))
        ),
    }
    return files


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
