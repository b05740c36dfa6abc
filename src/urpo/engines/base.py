"""The rollout engine interface: turn rendered prompts into sampled completions, without gradient.

An engine is anything with the :class:`RolloutEngine` shape: one batched ``generate`` call takes all the prompts of a
phase (the player's prompts, or all the referee's judging prompts of a step) and returns token ids, texts, finish
reasons and, where the engine has them, the sampled tokens' log-probs (:class:`RolloutBatch`). The engines:
:class:`~urpo.engines.hf_engine.HFGenerateEngine` (the default) and :class:`~urpo.engines.vllm_engine.VLLMEngine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from urpo.args import SamplingArgs

FinishReason = Literal["stop", "length"]


@dataclass
class RolloutBatch:
    """What one engine call returns; completions are prompt-major: prompt i's samples are ``[i*n, (i+1)*n)``."""

    prompt_ids: list[list[int]]
    """Token ids of each prompt (one entry per prompt)."""
    completion_ids: list[list[int]]
    """Token ids of each completion, without padding; ends with the EOS token when it finished by itself."""
    texts: list[str]
    """Decoded completions, special tokens removed."""
    finish_reasons: list[FinishReason]
    """'stop' when the completion ended with EOS, 'length' when it hit ``max_new_tokens``."""
    logprobs: list[list[float]] | None = None
    """The sampler's log-prob of each completion token (engines that track them, e.g. vLLM); None otherwise."""

    @property
    def samples_per_prompt(self) -> int:
        return len(self.completion_ids) // max(len(self.prompt_ids), 1)


@runtime_checkable
class RolloutEngine(Protocol):
    """The interface every rollout engine implements."""

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        """Sample ``n`` completions for each rendered prompt text, in one batched call."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights (called after every optimizer step)."""
        ...
