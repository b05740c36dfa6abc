"""Chat rendering: a judging prompt with a reply prefix ends inside the assistant's turn, so the model continues it."""

from __future__ import annotations

from urpo.args import ModelArgs
from urpo.models import load_tokenizer
from urpo.prompts import render_chat
from urpo.referee import RefereeTemplate


def test_a_reply_prefix_is_continued_not_closed(tiny_model_dir):
    tokenizer = load_tokenizer(ModelArgs(name_or_path=tiny_model_dir))
    free = render_chat(tokenizer, RefereeTemplate().messages("Which is best?", ["one", "two"], [0, 1]))
    prefilled = render_chat(
        tokenizer, RefereeTemplate(response_prefix="<ranking>").messages("Which is best?", ["one", "two"], [0, 1])
    )
    assert prefilled.endswith("<ranking>")  # nothing after the prefix: no end-of-turn, no new generation prompt
    assert prefilled.startswith(free)  # the same conversation, with the assistant's turn already begun
    assert prefilled.count("<ranking>") == free.count("<ranking>") + 1
