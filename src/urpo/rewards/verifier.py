"""``MathVerifier``: rule-based rewards for ``verifiable`` rows, by math-verify equivalence with the gold answer."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from functools import lru_cache

import torch

from urpo.boxed import last_boxed
from urpo.rewards.base import Episode, RewardCallback, RewardResult


def last_tagged(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` block in ``text``; None if absent."""
    matches = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL | re.IGNORECASE)
    return matches[-1].strip() if matches else None


class MathVerifier(RewardCallback):
    """Reward 1 when the completion's final answer is mathematically equivalent to the gold one, else 0.

    The final answer is read from the last ``\\boxed{}`` (default) or from the last ``<answer_tag>...</answer_tag>``
    block; equivalence is decided by math-verify (``0.5`` equals ``\\frac{1}{2}``, ``{1,2}`` equals ``{2,1}``).
    A completion cut off by the token limit is still checked: it simply rarely contains an answer.

    Args:
        answer_tag: read the answer from ``<answer_tag>`` blocks instead of ``\\boxed{}`` (None: boxed).
        correct_reward: reward of a correct answer.
        format_reward: added when a final answer could be extracted at all, right or wrong (0: off). It teaches
            the answer format early in training, when almost nothing is correct yet.
        max_answer_chars: longer extracted answers are judged wrong without parsing, which bounds the time one
            completion can take (math-verify's own timeouts are used as well where signals are available).
        timeout_seconds: math-verify's per-call timeout; only enforceable in the main thread.
        weight, kinds, name: see :class:`RewardCallback`.
    """

    default_kinds = ("verifiable",)

    def __init__(
        self,
        answer_tag: str | None = None,
        correct_reward: float = 1.0,
        format_reward: float = 0.0,
        max_answer_chars: int = 500,
        timeout_seconds: int = 5,
        weight: float = 1.0,
        kinds: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, kinds=kinds, name=name)
        self.answer_tag = answer_tag
        self.correct_reward = correct_reward
        self.format_reward = format_reward
        self.max_answer_chars = max_answer_chars
        self.timeout_seconds = timeout_seconds

    def extract(self, completion: str) -> str | None:
        """The final answer in a completion, or None when it has none in the expected format."""
        if self.answer_tag:
            return last_tagged(completion, self.answer_tag)
        try:
            return last_boxed(completion)
        except ValueError:  # the last box never closes: a completion cut off mid-answer has no answer
            return None

    def is_correct(self, prediction: str, gold: str) -> bool:
        """Whether an extracted answer is equivalent to the gold answer."""
        if len(prediction) > self.max_answer_chars:
            return False
        return _verify(gold, prediction, self._timeout())

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        correct, formatted = [], []
        for episode in episodes:
            answers = [self.extract(c) for c in episode.completions]
            formatted.append([a is not None for a in answers])
            correct.append([a is not None and self.is_correct(a, episode.row.answer) for a in answers])
        correct_t = torch.tensor(correct, dtype=torch.float32)  # [N, G]
        formatted_t = torch.tensor(formatted, dtype=torch.float32)  # [N, G]
        rewards = self.correct_reward * correct_t + self.format_reward * formatted_t  # [N, G]
        metrics = {"accuracy": correct_t.mean().item(), "format_rate": formatted_t.mean().item()}
        return RewardResult(rewards, metrics)

    def _timeout(self) -> int | None:
        # math-verify enforces timeouts with signal.alarm, which only the main thread may use.
        return self.timeout_seconds if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> list:
    from math_verify import parse

    # Plain-text gold answers ("72", "1/2") need math delimiters for math-verify to parse them.
    text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    return parse(text, parsing_timeout=timeout)


def _verify(gold: str, prediction: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold, timeout)
    pred_parsed = parse(f"$\\boxed{{{prediction}}}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - math-verify raises assorted sympy errors on odd input: treat as wrong
        return False
