"""Held-out scores of a model: solving (greedy answer vs the kept-aside truth) and judging (held-out preference rows).

* ``open_accuracy`` / ``verifiable_accuracy``: share of held-out open-style / verifiable problems whose greedy
  answer's last ``\\boxed{}`` holds the true integer.
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

from tools.evidence.spec import WorldSpec, world_spec
from tools.evidence.world import read_jsonl
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
    def load(cls, files: dict[str, Path], limit: int | None = None, prefix: str = "eval") -> HeldOut:
        """The sets ``{prefix}_open``, ``{prefix}_verifiable`` and ``{prefix}_preference`` of a world's files
        (``check``: the sets only a gate scores), the first ``limit`` rows of each."""
        name = f"{prefix}_preference"
        prefs = [adapt_generic(r, source=name, index=i) for i, r in enumerate(read_jsonl(files[name]))]
        solve = [read_jsonl(files[f"{prefix}_{kind}"])[:limit] for kind in ("open", "verifiable")]
        return cls(*solve, prefs[:limit])


ARITHMETIC = world_spec("arithmetic")
"""The toy world's prompts: the default of every function here."""


def solve_accuracy(model, tokenizer, records: Sequence[dict], spec: WorldSpec = ARITHMETIC) -> float:
    """Share of problems whose greedy answer equals the truth."""
    prompts = [
        render_chat(tokenizer, spec.player.messages(OpenRow(source="eval", index=0, prompt=r["prompt"])))
        for r in records
    ]
    answers = [spec.read_answer(t) for t in complete(model, tokenizer, prompts, max_new_tokens=spec.answer_tokens)]
    return sum(a == r["truth"] for a, r in zip(answers, records)) / max(len(records), 1)


def referee_report(
    model, tokenizer, rows: Sequence[PreferenceRow], spec: WorldSpec = ARITHMETIC, temperature: float | None = None
) -> dict:
    """``urpo eval-referee``'s overall report (accuracy, parse failures, position consistency and bias), with greedy
    judgments, or sampled at ``temperature``."""
    report = evaluate_referee(
        rows,
        ["all"] * len(rows),
        lambda prompts: complete(
            model, tokenizer, prompts, max_new_tokens=spec.judgment_tokens, temperature=temperature
        ),
        spec.referee,
        lambda messages: render_chat(tokenizer, messages),
    )
    return report["overall"]


def sampled_referee_accuracy(model, tokenizer, rows: Sequence[PreferenceRow], spec: WorldSpec = ARITHMETIC) -> float:
    """Held-out judging with the judgments sampled at temperature 1 (RL's rollouts), the same draws every time."""
    with torch.random.fork_rng(devices=[]):  # training's RNG stream is left untouched
        torch.manual_seed(0)
        return referee_report(model, tokenizer, rows, spec, temperature=1.0)["accuracy"] or 0.0


def evaluate(model, tokenizer, held: HeldOut, spec: WorldSpec = ARITHMETIC) -> dict[str, float]:
    """All three held-out scores of one model, and how its judgments fail: ``referee_parsed`` (share of judgments
    with a valid ranking) and ``referee_accuracy_parsed`` (accuracy over those; None when none parsed)."""
    judged = referee_report(model, tokenizer, held.preference, spec)
    return {
        "open_accuracy": solve_accuracy(model, tokenizer, held.open, spec),
        "verifiable_accuracy": solve_accuracy(model, tokenizer, held.verifiable, spec),
        "referee_accuracy": judged["accuracy"] or 0.0,
        "referee_sampled_accuracy": sampled_referee_accuracy(model, tokenizer, held.preference, spec),
        "referee_parsed": 1.0 - (judged["parse_failure_rate"] or 0.0),
        "referee_accuracy_parsed": judged["accuracy_parsed"],
        "referee_first_shown_top": judged["first_shown_top"] if judged["first_shown_top"] is not None else math.nan,
    }


class EvalCallback(L.Callback):
    """Scores the policy on the held-out sets before training and every ``every`` optimizer steps.

    ``start``: the scores of the model training starts from, when already known (a pretrained model scored once for
    every run: greedy decoding of the same weights gives the same scores), so step 0 is not scored again.
    """

    def __init__(
        self, held: HeldOut, every: int, spec: WorldSpec = ARITHMETIC, start: dict[str, float] | None = None
    ) -> None:
        self.held, self.every, self.spec = held, every, spec
        self.history: list[dict[str, float]] = [{"step": 0, **start}] if start else []

    def _record(self, module) -> None:
        scores = evaluate(module.policy, module.tokenizer, self.held, self.spec)
        self.history.append({"step": module.global_step, **scores})

    def on_train_start(self, trainer, module) -> None:
        if not self.history:
            self._record(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = module.global_step
        due = step % self.every == 0 or step == trainer.max_steps
        if due and self.history[-1]["step"] != step:  # on_train_start recorded step 0
            self._record(module)
