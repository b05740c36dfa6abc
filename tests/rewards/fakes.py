"""Test doubles for reward callbacks: a reward context, a scripted engine, and a judge that reads prompts."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from urpo.args import SamplingArgs
from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow
from urpo.engines.base import RolloutBatch
from urpo.episode import Episode
from urpo.referee import RefereeTemplate
from urpo.rewards.base import RewardContext

_SHOWN = re.compile(r"\[Response ([A-Z])\]\n(.*?)\n\[End of Response \1\]", re.DOTALL)
_QUALITY = re.compile(r"q=(-?\d+)")


class WordTokenizer:
    """A tokenizer stand-in: chat rendering with visible role tags, one token per whitespace-separated word."""

    eos_token_id = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return text + ("<assistant>\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


@dataclass
class ScriptedEngine:
    """Answers each prompt with ``reply(prompt, sample_index)``; records every call."""

    reply: Callable[[str, int], str]
    tokenizer: Any = None
    calls: list[tuple[list[str], int, SamplingArgs]] = field(default_factory=list)

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        self.calls.append((list(prompts), n, sampling))
        texts = [self.reply(p, k) for p in prompts for k in range(n)]
        encode = (
            (lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"])
            if self.tokenizer
            else (lambda t: [1] * len(t.split()))
        )
        eos = [self.tokenizer.eos_token_id] if self.tokenizer is not None else []
        return RolloutBatch(
            prompt_ids=[encode(p) for p in prompts],
            completion_ids=[encode(t) + eos for t in texts],
            texts=texts,
            finish_reasons=["stop"] * len(texts),
        )

    def sync_weights(self) -> None:
        pass


def fake_context(
    engine: ScriptedEngine | None = None, template: RefereeTemplate | None = None, rewards: Sequence[Any] = ()
) -> RewardContext:
    """What reward callbacks get from a run, with a scripted engine and a word tokenizer."""
    return RewardContext(
        engine=engine,
        tokenizer=WordTokenizer(),
        referee=template or RefereeTemplate(),
        sampling=SamplingArgs(max_new_tokens=64),
        rewards=tuple(rewards),
    )


def shown_responses(prompt: str) -> list[str]:
    """The response texts of a rendered judging prompt, in presentation order (label A first)."""
    return [body for _, body in _SHOWN.findall(prompt)]


def quality(text: str) -> int:
    """The hidden quality ``q=<int>`` written into a scripted answer (0 when absent)."""
    found = _QUALITY.search(text)
    return int(found.group(1)) if found else 0


def perfect_judge(prompt: str, _: int = 0) -> str:
    """Ranks the shown responses by their hidden quality, best first (ties broken by position)."""
    shown = shown_responses(prompt)
    ranked = sorted(range(len(shown)), key=lambda k: (-quality(shown[k]), k))
    return "They differ. <ranking>" + " > ".join(chr(65 + k) for k in ranked) + "</ranking>"


def preference_row(scores=(1.0, 0.0), index: int = 0, responses: Sequence[str] | None = None) -> PreferenceRow:
    responses = tuple(responses or (f"response number {i}" for i in range(len(scores))))
    prompt = "Which is better?"
    return PreferenceRow(source="test", index=index, prompt=prompt, responses=responses, scores=tuple(scores))


def preference_episode(
    completions: list[str], order: list[int], scores=(1.0, 0.0), responses: Sequence[str] | None = None
) -> Episode:
    row = preference_row(scores, responses=responses)
    reasons = ["stop"] * len(completions)
    orders = [list(order)] * len(completions)
    return Episode(row=row, messages=[], completions=completions, finish_reasons=reasons, orders=orders)


def open_episode(answers: list[str], reference: str | None = None, index: int = 0) -> Episode:
    row = OpenRow(source="test", index=index, prompt=f"Write something {index}.", reference=reference)
    return Episode(row=row, messages=[], completions=answers, finish_reasons=["stop"] * len(answers))


def verifiable_episode(answers: list[str], gold: str = "4", index: int = 0) -> Episode:
    row = VerifiableRow(source="test", index=index, prompt="What is 2 + 2?", answer=gold)
    return Episode(row=row, messages=[], completions=answers, finish_reasons=["stop"] * len(answers))


def ranking(*labels: str) -> str:
    return "<ranking>" + " > ".join(labels) + "</ranking>"
