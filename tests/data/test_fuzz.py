"""Fuzzing: whatever a record holds, an adapter returns a valid row or raises DataError, never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urpo.boxed import last_boxed
from urpo.data.formats import ADAPTERS
from urpo.data.schema import ROW_TYPES
from urpo.errors import DataError

# Each adapter's field names (and nested ones), so random records often look almost right.
FIELDS = {
    "gsm8k": ["question", "answer"],
    "math": ["problem", "solution", "answer"],
    "hh_rlhf": ["chosen", "rejected"],
    "ultrafeedback": [
        "instruction",
        "completions",
        "response",
        "overall_score",
        "fine-grained_score",
        "annotations",
        "Rating",
        "helpfulness",
        "prompt",
        "chosen",
        "rejected",
        "role",
        "content",
        "score_chosen",
        "score_rejected",
    ],
    "alpaca_eval_annotations": ["instruction", "output_1", "output_2", "preference"],
    "instructions": ["instruction", "input", "output"],
    "messages": ["messages", "role", "content"],
    "rewardbench": ["prompt", "chosen", "rejected", "subset"],
    "generic": ["kind", "prompt", "answer", "solution", "responses", "scores", "ranking", "reference"],
}
# Texts that get past the first checks of some adapter.
TEXTS = [
    "",
    "   ",
    "hi",
    "verifiable",
    "preference",
    "open",
    "user",
    "assistant",
    "system",
    "N/A",
    "1.5",
    "1,000",
    "nan",
    "\n\nHuman: hi\n\nAssistant: yo",
    "\n\nHuman: hi\n\nAssistant: no",
    "\n\nHuman: hi\n\nAssistant: ",
    "Human: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
    "steps <<1+1=2>>\n#### 1,000",
    "#### 7",
    "\\boxed{4}",
    "so \\boxed{\\frac{1}{2}",
    "\\fbox{x} \\boxed 5$",
]


def _msgs(*texts: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in zip(["user", "assistant"] * 2, texts)]


# One valid record per adapter (per form): fuzzing mutates them, to reach the checks deep inside.
VALID = {
    "gsm8k": [{"question": "1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"}],
    "math": [{"problem": "p?", "solution": "so \\boxed{\\frac{1}{2}}", "answer": "1/2"}],
    "hh_rlhf": [{"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"}],
    "ultrafeedback": [
        {
            "instruction": "x",
            "completions": [
                {"response": "a", "overall_score": 2.0},
                {"response": "b", "annotations": {"honesty": [{"Rating": "3"}]}},
            ],
        },
        {"prompt": "x", "chosen": _msgs("x", "a"), "rejected": _msgs("x", "b"), "score_chosen": 2, "score_rejected": 1},
    ],
    "alpaca_eval_annotations": [{"instruction": "x", "output_1": "a", "output_2": "b", "preference": 1.25}],
    "instructions": [{"instruction": "x", "input": "y", "output": "z"}],
    "messages": [{"messages": _msgs("q", "a", "q2", "a2")}],
    "rewardbench": [{"prompt": "x", "chosen": "a", "rejected": "b", "subset": "s"}],
    "generic": [
        {"kind": "verifiable", "prompt": "x", "answer": 2, "solution": "s"},
        {"kind": "preference", "prompt": "x", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
        {"kind": "preference", "prompt": "x", "responses": ["a", "b"], "scores": [0.5, 1]},
        {"kind": "open", "prompt": "x", "reference": "r"},
    ],
}


def _mutated(value: Any, random_values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``value`` with some parts (at any depth) replaced by random values or dropped; mostly kept."""
    if isinstance(value, dict):
        parts = st.fixed_dictionaries({k: _mutated(v, random_values) for k, v in value.items()})
        return parts.flatmap(
            lambda d: st.sets(st.sampled_from(list(d)), max_size=1).map(
                lambda drop: {k: v for k, v in d.items() if k not in drop}
            )
        )
    if isinstance(value, list):
        return st.tuples(*(_mutated(v, random_values) for v in value)).map(list) | st.just(value[:1])
    return st.one_of(st.just(value), st.just(value), st.just(value), random_values)


def _records(adapter: str) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(FIELDS[adapter]) | st.text(max_size=5)
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(TEXTS) | st.text(max_size=12)
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )
    shaped = st.fixed_dictionaries({}, optional={name: values for name in FIELDS[adapter]})
    near_valid = st.one_of(*(_mutated(record, values) for record in VALID[adapter]))
    return near_valid | near_valid | shaped | st.dictionaries(keys, values, max_size=6) | values


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_adapter_returns_a_valid_row_or_raises_data_error(adapter):
    info = ADAPTERS[adapter]

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record=_records(adapter))
    def check(record):
        try:
            row = info.adapter(record, source="fuzz", index=3)
        except DataError as error:
            assert (error.source, error.row) == ("fuzz", 3)
            return
        assert isinstance(row, ROW_TYPES[info.kind] if info.kind else tuple(ROW_TYPES.values()))
        assert (row.source, row.index) == ("fuzz", 3) and row.prompt.strip()

    check()


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("\\boxedfb{}$ 12\n")), max_size=40) | st.text(max_size=30))
def test_last_boxed_returns_text_none_or_value_error(text):
    try:
        answer = last_boxed(text)
    except ValueError as error:
        assert "unbalanced" in str(error)
        return
    assert answer is None or isinstance(answer, str)
