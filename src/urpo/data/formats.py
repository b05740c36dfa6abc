"""Adapters: one native record (a dict) of a public dataset in, one validated row out.

An adapter is called as ``adapter(record, source=..., index=...)`` and returns exactly one row, or raises
:class:`~urpo.errors.DataError` naming the source, the record index and the field at fault (missing field, wrong
type, empty text, a gold order that does not fit the responses, a tie that carries no preference, ...). Surrounding
whitespace of every extracted text is stripped.

=============================  ==========  ==========================================================
adapter                        kind        native fields (``?``: optional)
=============================  ==========  ==========================================================
``gsm8k``                      verifiable  ``question``, ``answer`` (steps, ``<<a=b>>`` notes, ``#### final``)
``math``                       verifiable  ``problem``, ``solution`` (last ``\\boxed{}``/``\\fbox{}``), ``answer?``
``hh_rlhf``                    preference  ``chosen``, ``rejected``: whole Human/Assistant dialogues
``ultrafeedback``              preference  raw: ``instruction``, ``completions[{response, overall_score?,
                                           fine-grained_score?, annotations?}]``; binarized: ``prompt?``,
                                           ``chosen``/``rejected`` message lists, ``score_chosen?``,
                                           ``score_rejected?``
``alpaca_eval_annotations``    preference  ``instruction``, ``output_1``, ``output_2``, ``preference`` in [1, 2]
``instructions``               open        ``instruction``, ``input?``, ``output?`` (AlpacaEval, Alpaca)
``messages``                   open        ``messages[{role, content}]`` (system / user / assistant)
``rewardbench``                preference  ``prompt``, ``chosen``, ``rejected`` (``subset``: :func:`record_subset`)
``generic``                    any         urpo's own JSONL schema, see :func:`adapt_generic`
=============================  ==========  ==========================================================

Conversations with more than one turn become a readable transcript ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman:
..."`` ending with the last user turn; a single user turn is its bare content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

from urpo.boxed import last_boxed
from urpo.data.fields import (
    Where,
    answer_text,
    as_list,
    as_number,
    as_record,
    as_text,
    field_text,
    message_turns,
    need,
    optional_text,
    render_conversation,
    short,
)
from urpo.data.schema import OpenRow, PreferenceRow, Row, RowKind, VerifiableRow

AdapterName = Literal[
    "gsm8k",
    "math",
    "hh_rlhf",
    "ultrafeedback",
    "alpaca_eval_annotations",
    "instructions",
    "messages",
    "rewardbench",
    "generic",
]


class Adapter(Protocol):
    """Signature shared by all adapters."""

    def __call__(self, record: Mapping[str, Any], *, source: str, index: int) -> Row: ...


_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def adapt_gsm8k(record: Mapping[str, Any], *, source: str, index: int) -> VerifiableRow:
    """GSM8K: ``question``; ``answer`` = worked steps then ``#### <final>`` on the last line.

    The gold answer is the text after ``####`` with thousands separators removed (``1,080`` -> ``1080``); the
    solution keeps the steps without the ``<<48/2=24>>`` calculator annotations.
    """
    where = Where(source, index)
    record = as_record(record, where)
    question = field_text(record, "question", where)
    steps, marker, final = field_text(record, "answer", where).rpartition("####")
    final = final.strip()
    if not marker or not final or "\n" in final:
        raise where.fail("answer", "no final answer after '####' on the last line")
    if _THOUSANDS.fullmatch(final):
        final = final.replace(",", "")
    solution = _CALCULATOR_NOTE.sub("", steps).strip() or None
    return VerifiableRow(source=source, index=index, prompt=question, answer=final, solution=solution)


def adapt_math(record: Mapping[str, Any], *, source: str, index: int) -> VerifiableRow:
    """MATH (hendrycks/competition_math, MATH-500): ``problem``, ``solution``, optional ``answer``.

    An explicit ``answer`` wins; otherwise the gold answer is the last ``\\boxed{...}`` / ``\\fbox{...}`` of the
    solution.
    """
    where = Where(source, index)
    record = as_record(record, where)
    problem = field_text(record, "problem", where)
    solution = optional_text(record, "solution", where)
    if record.get("answer") is not None:
        answer = answer_text(record["answer"], where, "answer")
    elif solution is None:
        raise where.fail("solution", "missing field (needed for the \\boxed{} answer when there is no 'answer')")
    else:
        try:
            answer = last_boxed(solution)
        except ValueError as exc:
            raise where.fail("solution", str(exc)) from None
        if not answer:
            raise where.fail("solution", "no \\boxed{...} answer in the solution")
    return VerifiableRow(source=source, index=index, prompt=problem, answer=answer, solution=solution)


# ---------------------------------------------------------------- preference

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_split(dialogue: str, where: Where, field: str) -> tuple[str, str]:
    cut = dialogue.rfind("\n\nAssistant:")
    if cut < 0:
        raise where.fail(field, "no '\\n\\nAssistant:' turn in the dialogue")
    return dialogue[:cut], dialogue[cut + len("\n\nAssistant:") :].strip()


def _hh_context(context: str, where: Where) -> str:
    # A few dumps drop the leading blank line; put it back so every turn splits the same way.
    if context.startswith(("Human:", "Assistant:")):
        context = "\n\n" + context
    parts = _HH_TURN.split(context)
    if parts[0].strip() or len(parts) < 3:
        raise where.fail("chosen", "dialogue must start with a '\\n\\nHuman:' turn")
    turns = [(_HH_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2])]
    if turns[-1][0] != "user":
        raise where.fail("chosen", "the turn before the final reply is not a Human turn")
    return render_conversation(turns)


def adapt_hh_rlhf(record: Mapping[str, Any], *, source: str, index: int) -> PreferenceRow:
    """Anthropic HH-RLHF: ``chosen`` / ``rejected`` whole dialogues that differ only in the last assistant reply.

    The shared turns become the prompt (a transcript ending with the last Human turn), the two final replies the
    responses, scored (1.0, 0.0).
    """
    where = Where(source, index)
    record = as_record(record, where)
    chosen_context, chosen = _hh_split(field_text(record, "chosen", where), where, "chosen")
    rejected_context, rejected = _hh_split(field_text(record, "rejected", where), where, "rejected")
    if chosen_context.strip() != rejected_context.strip():
        raise where.fail("rejected", "chosen and rejected dialogues differ before the last assistant reply")
    for field, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply:
            raise where.fail(field, "the last assistant reply is empty")
    prompt = _hh_context(chosen_context, where)
    return PreferenceRow(source=source, index=index, prompt=prompt, responses=(chosen, rejected), scores=(1.0, 0.0))


def _mean_rating(completion: Mapping[str, Any], where: Where, field: str) -> float:
    ratings = []
    for aspect, notes in completion["annotations"].items():
        # The GitHub dump stores one dict per aspect; some copies a list holding that dict.
        for note in notes if isinstance(notes, list) else [notes]:
            rating = note.get("Rating") if isinstance(note, Mapping) else None
            if rating not in (None, "N/A"):
                ratings.append(as_number(rating, where, f"{field}.annotations.{aspect}.Rating"))
    if not ratings:
        raise where.fail(f"{field}.annotations", "no numeric 'Rating' to average")
    return sum(ratings) / len(ratings)


def _ultrafeedback_raw(record: Mapping[str, Any], where: Where) -> PreferenceRow:
    prompt = field_text(record, "instruction", where)
    completions = as_list(record["completions"], where, "completions")
    for i, completion in enumerate(completions):
        if not isinstance(completion, Mapping):
            raise where.fail(f"completions[{i}]", f"completion must be an object, got {type(completion).__name__}")
    responses = tuple(field_text(c, "response", where, f"completions[{i}].response") for i, c in enumerate(completions))
    # One score for all completions of a record: overall_score (1-10) and fine-grained_score (1-5) do not mix.
    keys = [k for k in ("overall_score", "fine-grained_score") if all(c.get(k) is not None for c in completions)]
    key = keys[0] if keys else None
    if key is None and not all(isinstance(c.get("annotations"), Mapping) for c in completions):
        i = next(i for i, c in enumerate(completions) if c.get("overall_score") is None)
        raise where.fail(f"completions[{i}].overall_score", "missing field (and no 'annotations' ratings to average)")
    scores = tuple(
        as_number(c[key], where, f"completions[{i}].{key}") if key else _mean_rating(c, where, f"completions[{i}]")
        for i, c in enumerate(completions)
    )
    return PreferenceRow(source=where.source, index=where.index, prompt=prompt, responses=responses, scores=scores)


def _ultrafeedback_binarized(record: Mapping[str, Any], where: Where) -> PreferenceRow:
    chosen = message_turns(need(record, "chosen", where), where, "chosen")
    rejected = message_turns(need(record, "rejected", where), where, "rejected")
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1][0] != "assistant" or (len(turns) > 1 and turns[-2][0] != "user"):
            raise where.fail(field, "must end with a user turn then the assistant reply")
    if chosen[:-1] != rejected[:-1]:
        raise where.fail("rejected", "chosen and rejected conversations differ before the last reply")
    prompt = optional_text(record, "prompt", where)
    if prompt is None:
        if not chosen[:-1]:
            raise where.fail("prompt", "missing field (and no user turn before the replies)")
        prompt = render_conversation(chosen[:-1])
    scores = (1.0, 0.0)
    if record.get("score_chosen") is not None and record.get("score_rejected") is not None:
        scores = (
            as_number(record["score_chosen"], where, "score_chosen"),
            as_number(record["score_rejected"], where, "score_rejected"),
        )
        if scores[0] == scores[1]:
            raise where.fail("score_chosen", "tie: chosen and rejected have the same score, no preference")
        if scores[0] < scores[1]:
            raise where.fail("score_chosen", f"chosen scores lower than rejected: {scores}")
    return PreferenceRow(
        source=where.source,
        index=where.index,
        prompt=prompt,
        responses=(chosen[-1][1], rejected[-1][1]),
        scores=scores,
    )


def adapt_ultrafeedback(record: Mapping[str, Any], *, source: str, index: int) -> PreferenceRow:
    """UltraFeedback, raw (openbmb/UltraFeedback) or binarized (HuggingFaceH4/ultrafeedback_binarized).

    Raw: ``instruction`` + ``completions`` (N responses), scored by ``overall_score`` if every completion has one,
    else ``fine-grained_score`` if every one has it, else the mean of each one's ``annotations`` ratings (``"N/A"``
    ignored). Binarized: ``chosen``
    / ``rejected`` message lists whose last assistant messages are the two responses, ``prompt`` (else the shared
    turns), scored ``(score_chosen, score_rejected)`` when both are given, else (1.0, 0.0).
    """
    where = Where(source, index)
    record = as_record(record, where)
    if record.get("completions") is not None:
        return _ultrafeedback_raw(record, where)
    if "chosen" in record or "rejected" in record:
        return _ultrafeedback_binarized(record, where)
    raise where.fail("completions", "missing field (raw form needs 'completions', binarized 'chosen'/'rejected')")


def adapt_alpaca_eval_annotations(record: Mapping[str, Any], *, source: str, index: int) -> PreferenceRow:
    """AlpacaEval annotations: ``instruction``, ``output_1``, ``output_2``, ``preference`` (number or string).

    ``preference`` p in [1, 2] is how much output_2 is preferred: scores = (2 - p, p - 1), so fractional values stay
    soft labels. p == 1.5 and AlpacaEval's draw code 0 are ties and raise a DataError (skippable).
    """
    where = Where(source, index)
    record = as_record(record, where)
    prompt = field_text(record, "instruction", where)
    outputs = (field_text(record, "output_1", where), field_text(record, "output_2", where))
    preference = as_number(need(record, "preference", where), where, "preference")
    if preference in (0.0, 1.5):
        raise where.fail("preference", f"tie (preference {preference:g}): the annotator preferred neither output")
    if not 1.0 <= preference <= 2.0:
        raise where.fail("preference", f"must lie in [1, 2], got {preference:g}")
    return PreferenceRow(
        source=source, index=index, prompt=prompt, responses=outputs, scores=(2.0 - preference, preference - 1.0)
    )


def adapt_rewardbench(record: Mapping[str, Any], *, source: str, index: int) -> PreferenceRow:
    """RewardBench (allenai/reward-bench): ``prompt``, ``chosen``, ``rejected`` strings, scored (1.0, 0.0)."""
    where = Where(source, index)
    record = as_record(record, where)
    responses = (field_text(record, "chosen", where), field_text(record, "rejected", where))
    prompt = field_text(record, "prompt", where)
    return PreferenceRow(source=source, index=index, prompt=prompt, responses=responses, scores=(1.0, 0.0))


def record_subset(record: Mapping[str, Any]) -> str | None:
    """The RewardBench ``subset`` (e.g. ``"alpacaeval-easy"``) of a native record, for per-subset evaluation."""
    subset = record.get("subset") if isinstance(record, Mapping) else None
    return subset if isinstance(subset, str) and subset else None


# ---------------------------------------------------------------- open


def adapt_instructions(record: Mapping[str, Any], *, source: str, index: int) -> OpenRow:
    """Instruction sets (AlpacaEval ``{instruction, dataset}``, Alpaca ``{instruction, input, output}``).

    A non-empty ``input`` is appended to the instruction after a blank line; ``output`` becomes the reference.
    """
    where = Where(source, index)
    record = as_record(record, where)
    prompt = field_text(record, "instruction", where)
    extra = optional_text(record, "input", where)
    if extra is not None:
        prompt = f"{prompt}\n\n{extra}"
    reference = optional_text(record, "output", where)
    return OpenRow(source=source, index=index, prompt=prompt, reference=reference)


def adapt_messages(record: Mapping[str, Any], *, source: str, index: int) -> OpenRow:
    """Chat records (e.g. HuggingFaceH4/ultrachat_200k): ``messages`` = ``[{role, content}, ...]``.

    The prompt is the conversation up to the last user turn; one assistant turn after it becomes the reference.
    """
    where = Where(source, index)
    turns = message_turns(need(as_record(record, where), "messages", where), where, "messages")
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not users:
        raise where.fail("messages", "no user turn")
    tail = turns[users[-1] + 1 :]
    if len(tail) > 1 or (tail and tail[0][0] != "assistant"):
        raise where.fail("messages", "after the last user turn only one assistant reply may follow")
    reference = tail[0][1] if tail else None
    prompt = render_conversation(turns[: users[-1] + 1])
    return OpenRow(source=source, index=index, prompt=prompt, reference=reference)


# ---------------------------------------------------------------- urpo's own schema


def _generic_scores(record: Mapping[str, Any], n: int, where: Where) -> tuple[float, ...]:
    if record.get("scores") is not None and record.get("ranking") is not None:
        raise where.fail("ranking", "give either 'scores' or 'ranking', not both")
    if record.get("scores") is not None:
        return tuple(
            as_number(s, where, f"scores[{i}]") for i, s in enumerate(as_list(record["scores"], where, "scores"))
        )
    ranking = as_list(need(record, "ranking", where, "scores"), where, "ranking")
    indices = [r for r in ranking if isinstance(r, int) and not isinstance(r, bool)]
    if len(indices) != len(ranking) or sorted(indices) != list(range(n)):
        raise where.fail("ranking", f"must list each response index 0..{n - 1} once, best first; got {short(ranking)}")
    # The best response gets n, the worst 1: only the order matters.
    scores = [0.0] * n
    for position, response_index in enumerate(ranking):
        scores[response_index] = float(n - position)
    return tuple(scores)


def adapt_generic(record: Mapping[str, Any], *, source: str, index: int) -> Row:
    """urpo's own JSONL schema; ``kind`` picks the row type:

    - ``{"kind": "verifiable", "prompt", "answer" (text or number), "solution"?}``
    - ``{"kind": "preference", "prompt", "responses": [N >= 2 texts], "scores": [N numbers, higher is better]}``,
      or ``"ranking": [response indices, best first]`` instead of ``scores``
    - ``{"kind": "open", "prompt", "reference"?}``
    """
    where = Where(source, index)
    record = as_record(record, where)
    kind = need(record, "kind", where)
    prompt = field_text(record, "prompt", where)
    if kind == "verifiable":
        answer = answer_text(need(record, "answer", where), where, "answer")
        solution = optional_text(record, "solution", where)
        return VerifiableRow(source=source, index=index, prompt=prompt, answer=answer, solution=solution)
    if kind == "preference":
        items = as_list(need(record, "responses", where), where, "responses")
        responses = tuple(as_text(r, where, f"responses[{i}]") for i, r in enumerate(items))
        scores = _generic_scores(record, len(responses), where)
        return PreferenceRow(source=source, index=index, prompt=prompt, responses=responses, scores=scores)
    if kind == "open":
        return OpenRow(source=source, index=index, prompt=prompt, reference=optional_text(record, "reference", where))
    raise where.fail("kind", f"must be 'verifiable', 'preference' or 'open', got {short(kind)}")


class AdapterInfo(NamedTuple):
    """An adapter and the kind of row it makes (None: each record says its kind)."""

    adapter: Adapter
    kind: RowKind | None


ADAPTERS: dict[AdapterName, AdapterInfo] = {
    "gsm8k": AdapterInfo(adapt_gsm8k, "verifiable"),
    "math": AdapterInfo(adapt_math, "verifiable"),
    "hh_rlhf": AdapterInfo(adapt_hh_rlhf, "preference"),
    "ultrafeedback": AdapterInfo(adapt_ultrafeedback, "preference"),
    "alpaca_eval_annotations": AdapterInfo(adapt_alpaca_eval_annotations, "preference"),
    "instructions": AdapterInfo(adapt_instructions, "open"),
    "messages": AdapterInfo(adapt_messages, "open"),
    "rewardbench": AdapterInfo(adapt_rewardbench, "preference"),
    "generic": AdapterInfo(adapt_generic, None),
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterInfo",
    "AdapterName",
    "adapt_alpaca_eval_annotations",
    "adapt_generic",
    "adapt_gsm8k",
    "adapt_hh_rlhf",
    "adapt_instructions",
    "adapt_math",
    "adapt_messages",
    "adapt_rewardbench",
    "adapt_ultrafeedback",
    "last_boxed",
    "record_subset",
    "render_conversation",
]
