"""The player's prompt templates and chat rendering.

The player answers ``verifiable`` and ``open`` rows; ``preference`` rows are shown to the referee instead (see
:mod:`urpo.referee`). The paper does not publish its prompts, so these are documented defaults, configurable in YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from urpo.data.schema import Row

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PlayerTemplate:
    """How rows are turned into the player's chat prompt."""

    system: str | None = None
    """Optional system message placed before every player prompt."""
    verifiable_suffix: str = "\n\nSolve the problem step by step, then give the final answer in \\boxed{}."
    """Appended to verifiable problems; it must ask for the answer format the verifier extracts."""
    open_suffix: str = ""
    """Appended to open-ended instructions."""

    def messages(self, row: Row) -> Messages:
        """The chat messages that ask the player to answer ``row``."""
        suffix = self.verifiable_suffix if row.kind == "verifiable" else self.open_suffix
        return with_system(self.system, [{"role": "user", "content": row.prompt + suffix}])


def with_system(system: str | None, messages: Messages) -> Messages:
    """Prepend a system message when one is configured."""
    return ([{"role": "system", "content": system}] if system else []) + messages


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """Render messages with the tokenizer's chat template, ending where the assistant's reply starts.

    When the last message is the assistant's, its text is the start of the reply (a prefill, such as
    :attr:`~urpo.referee.RefereeTemplate.response_prefix`): the rendering ends inside that message, so the model
    continues it (``continue_final_message`` of ``apply_chat_template``).
    """
    if messages and messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
