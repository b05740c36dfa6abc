"""Judging with the model: sample referee judgments through a rollout engine and read them back as verdicts.

:mod:`urpo.referee` defines the judging prompt and its parser as text; this module is where the reward callbacks
(:class:`~urpo.rewards.PreferenceReward`, :class:`~urpo.rewards.SelfJudge`) and ``urpo eval-referee`` meet the
engine: :func:`generate_judgments` makes one batched engine call (timed as the step's ``judge`` phase), and
:func:`read_verdict` parses a completion and maps its ranking back to the original response indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from urpo.prompts import render_chat
from urpo.referee import ParseFailure, RefereeTemplate, Tiers, to_original
from urpo.timing import timed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from urpo.args import SamplingArgs
    from urpo.engines.base import RolloutEngine


@dataclass(frozen=True)
class Verdict:
    """One judgment read back: a ranking over original response indices, or why there is none."""

    tiers: Tiers | None
    """The ranking over original indices, best tier first; None when the completion failed to parse."""
    failure: str | None = None
    """The :data:`~urpo.referee.ParseFailureReason` when ``tiers`` is None."""

    @property
    def parsed(self) -> bool:
        return self.tiers is not None


def read_verdict(template: RefereeTemplate, text: str, order: Sequence[int], prompt: str | None = None) -> Verdict:
    """Parses ``text`` as a ranking of ``len(order)`` shown responses and maps it to original indices.

    ``prompt`` is the judging prompt's text: ranking blocks the completion copies from it are not verdicts.
    """
    parsed = template.parse(text, len(order), prompt)
    if isinstance(parsed, ParseFailure):
        return Verdict(None, parsed.reason)
    return Verdict(to_original(parsed, order))


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """All text of a chat prompt, for telling an echo of the prompt from a verdict (:func:`read_verdict`)."""
    return "\n".join(m["content"] for m in messages)


def generate_judgments(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[list[dict[str, str]]],
    n: int,
    sampling: SamplingArgs,
) -> list[str]:
    """Renders judging tasks and samples ``n`` judgments of each with ``engine``, in ONE batched call.

    Returns the texts prompt-major: prompt i's judgments are ``[i * n, (i + 1) * n)``. No call is made for no prompts.
    """
    if not messages:
        return []
    prompts = [render_chat(tokenizer, m) for m in messages]
    # Judgments are never trained on (no_grad also covers engines that do not disable gradients).
    with timed("judge"), torch.no_grad():
        return list(engine.generate(prompts, n, sampling).texts)
