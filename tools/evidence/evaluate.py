"""Held-out scores of a model: solving (greedy answer vs the kept-aside truth) and judging (held-out preference rows).

* ``open_accuracy`` / ``verifiable_accuracy``: share of held-out subtraction / addition problems whose greedy answer's
  last ``\\boxed{}`` holds the true integer.
* ``referee_accuracy``: ``urpo eval-referee``'s accuracy (:func:`urpo.referee_eval.evaluate_referee`): every held-out
  preference row is judged greedily in both presentation orders; a judgment scores its pairwise accuracy against the
  gold order (for pairs: 1 if the better answer is ranked first), 0 when it does not parse;
  ``referee_parsed`` is the share of those judgments that parse, ``referee_first_shown_top`` the share of parsed ones
  that rank the answer shown first on top (0.5 without position bias);
* ``referee_sampled_accuracy``: the same judgments sampled at temperature 1 (RL's rollouts) instead of greedy. For a
  referee whose verdict is near a coin flip, the greedy verdict follows whichever position is ahead by a hair and
  swings between "always the first" and "always the second" (50% either way), while the sampled accuracy moves only
  as the referee's verdicts come to depend on the answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from tools.evidence.world import PLAYER, REFEREE, read_jsonl
from urpo.boxed import last_boxed
from urpo.data.formats import adapt_generic
from urpo.data.schema import OpenRow, PreferenceRow
from urpo.engines.hf_engine import complete
from urpo.prompts import render_chat
from urpo.referee_eval import evaluate_referee


@dataclass
class HeldOut:
    """The evaluation sets, read once."""

    open: list[dict]
    verifiable: list[dict]
    preference: list[PreferenceRow]

    @classmethod
    def load(cls, files: dict[str, Path], limit: int | None = None) -> HeldOut:
        prefs = [
            adapt_generic(r, source="eval_preference", index=i)
            for i, r in enumerate(read_jsonl(files["eval_preference"]))
        ]
        return cls(read_jsonl(files["eval_open"])[:limit], read_jsonl(files["eval_verifiable"])[:limit], prefs[:limit])


def answer_of(text: str) -> int | None:
    """The integer in the last ``\\boxed{}``, or None."""
    try:
        content = last_boxed(text)
    except ValueError:
        return None
    return int(content) if content is not None and content.isdigit() else None


def solve_accuracy(model, tokenizer, records: Sequence[dict]) -> float:
    """Share of problems whose greedy answer equals the truth."""
    prompts = [
        render_chat(tokenizer, PLAYER.messages(OpenRow(source="eval", index=0, prompt=r["prompt"]))) for r in records
    ]
    answers = [answer_of(t) for t in complete(model, tokenizer, prompts, max_new_tokens=10)]
    return sum(a == r["truth"] for a, r in zip(answers, records)) / max(len(records), 1)


def referee_scores(model, tokenizer, rows: Sequence[PreferenceRow]) -> dict[str, float]:
    """``urpo eval-referee``'s overall accuracy with greedy judgments, the share that parsed and the share that rank
    the first shown answer best (position bias)."""
    report = evaluate_referee(
        rows,
        ["all"] * len(rows),
        lambda prompts: complete(model, tokenizer, prompts, max_new_tokens=32),
        REFEREE,
        lambda messages: render_chat(tokenizer, messages),
    )
    overall = report["overall"]
    with torch.random.fork_rng(devices=[]):  # the same draws at every evaluation, and training's RNG untouched
        torch.manual_seed(0)
        sampled = evaluate_referee(
            rows,
            ["all"] * len(rows),
            lambda prompts: complete(model, tokenizer, prompts, max_new_tokens=32, temperature=1.0),
            REFEREE,
            lambda messages: render_chat(tokenizer, messages),
        )
    return {
        "referee_accuracy": overall["accuracy"] or 0.0,
        "referee_sampled_accuracy": sampled["overall"]["accuracy"] or 0.0,
        "referee_parsed": 1.0 - (overall["parse_failure_rate"] or 0.0),
        "referee_first_shown_top": overall["first_shown_top"] if overall["first_shown_top"] is not None else math.nan,
    }


def evaluate(model, tokenizer, held: HeldOut) -> dict[str, float]:
    """All three held-out scores of one model."""
    return {
        "open_accuracy": solve_accuracy(model, tokenizer, held.open),
        "verifiable_accuracy": solve_accuracy(model, tokenizer, held.verifiable),
        **referee_scores(model, tokenizer, held.preference),
    }


class EvalCallback(L.Callback):
    """Scores the policy on the held-out sets before training and every ``every`` optimizer steps."""

    def __init__(self, held: HeldOut, every: int) -> None:
        self.held, self.every = held, every
        self.history: list[dict[str, float]] = []

    def _record(self, module) -> None:
        scores = evaluate(module.policy, module.tokenizer, self.held)
        self.history.append({"step": module.global_step, **scores})

    def on_train_start(self, trainer, module) -> None:
        self._record(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.global_step
        due = step % self.every == 0 or step == trainer.max_steps
        if due and self.history[-1]["step"] != step:  # on_train_start recorded step 0
            self._record(module)
