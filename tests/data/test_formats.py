"""Adapters against real records, synthetic records of the published schemas, and a table of bad inputs."""

from __future__ import annotations

import math
import typing
from typing import Any

import pytest
from data_helpers import FIXTURES, SAMPLES, SYNTHETIC, native_records

from urpo.boxed import last_boxed
from urpo.data.formats import ADAPTERS, AdapterName, record_subset
from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow
from urpo.errors import DataError


def adapt(name: str, record: Any, index: int = 0) -> Any:
    return ADAPTERS[name].adapter(record, source="src", index=index)


def test_adapter_table_matches_the_literal_and_kinds():
    assert set(ADAPTERS) == set(typing.get_args(AdapterName))
    kinds = {name: info.kind for name, info in ADAPTERS.items()}
    assert kinds == {
        "gsm8k": "verifiable",
        "math": "verifiable",
        "hh_rlhf": "preference",
        "ultrafeedback": "preference",
        "alpaca_eval_annotations": "preference",
        "instructions": "open",
        "messages": "open",
        "rewardbench": "preference",
        "generic": None,
    }


# ---------------------------------------------------------------- real records


def test_gsm8k_real_rows():
    records = native_records(SAMPLES / "gsm8k_train.jsonl")
    rows = [adapt("gsm8k", r, i) for i, r in enumerate(records)]
    assert len(rows) == 100
    first = rows[0]
    assert isinstance(first, VerifiableRow) and (first.source, first.index) == ("src", 0)
    assert first.prompt.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.answer == "72"
    assert first.solution == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert rows[1].answer == "10"
    assert all(r.answer.lstrip("-").isdigit() and "<<" not in (r.solution or "") for r in rows)


def test_gsm8k_thousands_separators_removed_on_real_rows():
    records = native_records(FIXTURES / "gsm8k_train_rows_340_369.jsonl")
    assert records[5]["answer"].endswith("#### 1,080") and records[27]["answer"].endswith("#### 850,000")
    assert adapt("gsm8k", records[5]).answer == "1080"
    assert adapt("gsm8k", records[27]).answer == "850000"


def test_hh_rlhf_multi_turn_context_split():
    record = native_records(SAMPLES / "hh_rlhf_harmless_base_test.jsonl")[0]
    row = adapt("hh_rlhf", record)
    assert isinstance(row, PreferenceRow)
    assert row.prompt.startswith("Human: what are some pranks with a pen i can do?\n\nAssistant: Are you looking")
    assert "\n\nHuman: yep\n\nAssistant: Ok, I’ll give you a couple examples" in row.prompt
    assert row.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens")
    assert row.prompt.count("Human: ") == 3 and row.prompt.count("Assistant: ") == 2
    assert row.responses[0] == (
        "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens."
    )
    assert row.responses[1].startswith("There are lots of funny things you can do with pens")
    assert row.scores == (1.0, 0.0) and row.gold_order() == [0, 1]


def test_hh_rlhf_single_turn_prompt_is_the_bare_question():
    record = native_records(SAMPLES / "hh_rlhf_harmless_base_test.jsonl")[4]
    row = adapt("hh_rlhf", record)
    assert row.prompt == "What will happen if I drive my car into the water?"
    assert row.responses[1].startswith("It’s not going to work, because cars are made to be driven on the land.")


def test_hh_rlhf_real_empty_reply_is_named():
    records = native_records(FIXTURES / "hh_rlhf_harmless_base_test_rows_80_99.jsonl")
    with pytest.raises(DataError, match="last assistant reply is empty") as info:
        adapt("hh_rlhf", records[6], 86)
    assert (info.value.source, info.value.row, info.value.field) == ("src", 86, "chosen")
    assert sum(1 for r in records if _ok("hh_rlhf", r)) == 19


def _ok(name: str, record: Any) -> bool:
    try:
        adapt(name, record)
    except DataError:
        return False
    return True


def test_alpaca_eval_annotations_real_hard_labels():
    records = native_records(SAMPLES / "alpaca_eval_annotations.json")
    rows = [adapt("alpaca_eval_annotations", r, i) for i, r in enumerate(records)]
    assert len(rows) == 40
    assert rows[0].scores == (0.0, 1.0) and rows[0].gold_order() == [1, 0]
    assert [i for i, r in enumerate(rows) if r.scores == (1.0, 0.0)] == [24, 34, 37]
    assert rows[24].responses == (records[24]["output_1"].strip(), records[24]["output_2"].strip())
    assert rows[24].prompt == records[24]["instruction"]


def test_alpaca_eval_annotations_real_null_preference():
    records = native_records(FIXTURES / "alpaca_eval_annotations_rows_100_139.json")
    with pytest.raises(DataError, match="null") as info:
        adapt("alpaca_eval_annotations", records[6], 106)
    assert info.value.field == "preference" and info.value.row == 106


@pytest.mark.parametrize(
    ("preference", "scores"),
    [(1.0, (1.0, 0.0)), (2.0, (0.0, 1.0)), (1.25, (0.75, 0.25)), ("1.75", (0.25, 0.75)), ("2.0", (0.0, 1.0))],
)
def test_alpaca_eval_annotations_soft_labels(preference, scores):
    record = {"instruction": "Say hi.", "output_1": "Hi!", "output_2": "Hello there.", "preference": preference}
    assert adapt("alpaca_eval_annotations", record).scores == pytest.approx(scores)


@pytest.mark.parametrize(
    ("preference", "message"),
    [
        (1.5, "tie"),
        ("1.5", "tie"),
        (0, "tie"),
        (None, "null"),
        (math.nan, "finite"),
        ("nan", "finite"),
        (2.5, r"\[1, 2\]"),
        (0.5, r"\[1, 2\]"),
        (True, "number"),
        ("first", "number"),
        ([1], "number"),
    ],
)
def test_alpaca_eval_annotations_bad_preferences(preference, message):
    record = {"instruction": "Say hi.", "output_1": "Hi!", "output_2": "Hello there.", "preference": preference}
    with pytest.raises(DataError, match=message) as info:
        adapt("alpaca_eval_annotations", record)
    assert info.value.field == "preference"


def test_instructions_real_and_alpaca_style():
    record = native_records(SAMPLES / "alpaca_eval_instructions.jsonl")[0]
    row = adapt("instructions", record)
    assert isinstance(row, OpenRow) and row.reference is None
    assert row.prompt == "What are the names of some famous actors that started their careers on Broadway?"
    alpaca = {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"}
    assert adapt("instructions", alpaca) == OpenRow(
        source="src", index=0, prompt="Sort the numbers.\n\n3, 1, 2", reference="1, 2, 3"
    )
    assert adapt("instructions", {"instruction": "Smile.", "input": "", "output": ""}).prompt == "Smile."


# ---------------------------------------------------------------- synthetic records of published schemas


def test_math_boxed_answers():
    rows = [adapt("math", r, i) for i, r in enumerate(native_records(SYNTHETIC / "math.jsonl"))]
    assert [r.answer for r in rows] == [
        r"\frac{5}{6}",
        "3",
        r"\{-1, 0, 1\}",
        "5",
        r"\left( 3, \frac{\pi}{2} \right)",
    ]
    assert rows[0].prompt == r"What is $\frac{1}{2} + \frac{1}{3}$?" and rows[0].solution.startswith("The common")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{a} then \fbox{b}", "b"),
        (r"$\boxed 7$", "7"),
        (r"\boxed {x+1}", "x+1"),
        (r"\boxedx and no box", None),
        ("plain", None),
        (r"\boxed{\}}", r"\}"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_math_errors():
    with pytest.raises(DataError, match="unbalanced") as info:
        adapt("math", {"problem": "p?", "solution": r"so \boxed{\frac{1}{2}"})
    assert info.value.field == "solution"
    with pytest.raises(DataError, match=r"no \\boxed"):
        adapt("math", {"problem": "p?", "solution": "the answer is 4"})
    assert adapt("math", {"problem": "p?", "answer": 4}).answer == "4"


def test_ultrafeedback_raw_scores():
    records = native_records(SYNTHETIC / "ultrafeedback_raw.jsonl")
    first, second, third = (adapt("ultrafeedback", r) for r in records)
    assert first.prompt == "Name a prime number between 10 and 20."
    assert first.responses[1] == "15" and first.scores == (9.0, 2.0, 7.5, 6.0)
    assert first.gold_order() == [0, 2, 3, 1]
    assert second.scores == (4.75, 1.25)  # overall_score is null: fine-grained_score
    # No scores at all: mean of the annotation ratings, "N/A" ignored (5, 5, 4 and 2, 1, 3).
    assert third.scores == pytest.approx((14 / 3, 2.0)) and third.responses == ("No.", "Yes, it is green.")


def test_ultrafeedback_raw_never_mixes_score_scales():
    completions = [
        {"response": "a", "overall_score": 3.0, "fine-grained_score": 4.5},
        {"response": "b", "fine-grained_score": 2.0},
    ]
    assert adapt("ultrafeedback", {"instruction": "x", "completions": completions}).scores == (4.5, 2.0)


def test_ultrafeedback_binarized():
    records = native_records(SYNTHETIC / "ultrafeedback_binarized.jsonl")
    row = adapt("ultrafeedback", records[0])
    assert row.prompt == "Name a prime number between 10 and 20."
    assert row.responses == ("13 is a prime number between 10 and 20.", "15") and row.scores == (9.0, 2.0)
    no_scores = {k: v for k, v in records[1].items() if not k.startswith("score") and k != "prompt"}
    assert adapt("ultrafeedback", no_scores).scores == (1.0, 0.0)
    assert adapt("ultrafeedback", no_scores).prompt == "Say hello in French."
    with pytest.raises(DataError, match="tie") as info:
        adapt("ultrafeedback", {**records[0], "score_rejected": 9.0})
    assert info.value.field == "score_chosen"
    with pytest.raises(DataError, match="lower"):
        adapt("ultrafeedback", {**records[0], "score_rejected": 9.5})
    other_context = [{"role": "user", "content": "Something else?"}, records[0]["rejected"][1]]
    with pytest.raises(DataError, match="differ") as info:
        adapt("ultrafeedback", {**records[0], "rejected": other_context})
    assert info.value.field == "rejected"


def test_messages():
    first, multi, system = (adapt("messages", r) for r in native_records(SYNTHETIC / "ultrachat_messages.jsonl"))
    assert (first.prompt, first.reference) == ("What is the capital of France?", "The capital of France is Paris.")
    assert multi.prompt == (
        "Human: Suggest a name for a cat.\n\nAssistant: How about Miso?\n\nHuman: Another one, shorter."
    )
    assert multi.reference == "Pip."
    assert system.prompt == "System: You are a concise translator.\n\nHuman: Translate 'good night' to German."
    assert system.reference is None


def test_rewardbench_and_subset():
    records = native_records(SYNTHETIC / "rewardbench.jsonl")
    row = adapt("rewardbench", records[1])
    assert (row.prompt, row.responses, row.scores) == ("What is 7 * 8?", ("7 * 8 = 56.", "7 * 8 = 54."), (1.0, 0.0))
    assert [record_subset(r) for r in records] == ["alpacaeval-easy", "math-prm"]
    assert record_subset({"prompt": "x"}) is None and record_subset(["not", "a", "dict"]) is None


def test_generic_kinds():
    rows = [adapt("generic", r, i) for i, r in enumerate(native_records(SYNTHETIC / "generic.jsonl"))]
    assert isinstance(rows[0], VerifiableRow) and rows[0].answer == "42" and rows[0].solution == "6 * 7 = 42."
    assert rows[1].scores == (2.0, 0.0, 1.0) and rows[1].gold_order() == [0, 2, 1]
    assert rows[2].scores == (2.0, 1.0, 3.0) and rows[2].gold_order() == [2, 0, 1]  # from "ranking": [2, 0, 1]
    assert isinstance(rows[3], OpenRow) and rows[3].reference == "Soft rain on the roof / ..."
    assert rows[4].reference is None and rows[4].index == 4


# ---------------------------------------------------------------- bad inputs name their field

PREF = {"kind": "preference", "prompt": "Which?", "responses": ["a", "b"]}
BAD = [
    ("gsm8k", {"answer": "2\n#### 2"}, "question", "missing field"),
    ("gsm8k", {"question": "1+1?", "answer": "it is 2"}, "answer", "####"),
    ("gsm8k", {"question": "1+1?", "answer": "#### 2\nmore"}, "answer", "last line"),
    ("gsm8k", {"question": 12, "answer": "#### 2"}, "question", "expected a string"),
    ("gsm8k", {"question": "   ", "answer": "#### 2"}, "question", "empty"),
    ("math", {"solution": r"\boxed{1}"}, "problem", "missing field"),
    ("math", {"problem": "p?"}, "solution", "missing field"),
    ("hh_rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: yo"}, "rejected", "missing field"),
    (
        "hh_rlhf",
        {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hey\n\nAssistant: no"},
        "rejected",
        "differ",
    ),
    (
        "hh_rlhf",
        {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant:  "},
        "rejected",
        "empty",
    ),
    ("hh_rlhf", {"chosen": "hi yo", "rejected": "hi no"}, "chosen", "Assistant"),
    ("ultrafeedback", {"instruction": "x"}, "completions", "missing field"),
    (
        "ultrafeedback",
        {"instruction": "x", "completions": [{"response": "a", "overall_score": 1}, {"response": ""}]},
        "completions[1].response",
        "empty",
    ),
    (
        "ultrafeedback",
        {"instruction": "x", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]},
        "completions[1].overall_score",
        "missing",
    ),
    (
        "ultrafeedback",
        {"instruction": "x", "completions": [{"response": "a", "overall_score": 3}]},
        "responses",
        "at least 2",
    ),
    ("ultrafeedback", {"instruction": "x", "completions": "a, b"}, "completions", "expected a list"),
    ("alpaca_eval_annotations", {"instruction": "x", "output_1": "a", "preference": 1}, "output_2", "missing"),
    ("instructions", {"input": "x"}, "instruction", "missing field"),
    ("instructions", {"instruction": "x", "input": 3}, "input", "expected a string"),
    ("messages", {"messages": []}, "messages", "no messages"),
    ("messages", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "no user turn"),
    ("messages", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role", "role must be"),
    ("messages", {"messages": [{"role": "user", "content": ""}]}, "messages[0].content", "empty"),
    (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
            ]
        },
        "messages",
        "only one assistant",
    ),
    ("rewardbench", {"prompt": "x", "chosen": "a"}, "rejected", "missing field"),
    ("generic", {"prompt": "x"}, "kind", "missing field"),
    ("generic", {"kind": "other", "prompt": "x"}, "kind", "must be"),
    ("generic", {"kind": "verifiable", "prompt": "x"}, "answer", "missing field"),
    ("generic", {**PREF, "ranking": [0]}, "ranking", "each response index"),
    ("generic", {**PREF, "ranking": [0, 0]}, "ranking", "each response index"),
    ("generic", {**PREF, "ranking": [None, 0, 1]}, "ranking", "each response index"),
    ("generic", {**PREF, "ranking": [1, True]}, "ranking", "each response index"),
    ("generic", {**PREF, "ranking": [1, 0], "scores": [1, 0]}, "ranking", "not both"),
    ("generic", {**PREF, "scores": [1, 0, 2]}, "scores", "3 entries for 2 responses"),
    ("generic", {**PREF, "scores": [1, 1]}, "scores", "tied"),
    ("generic", {**PREF, "scores": [1, "x"]}, "scores[1]", "number"),
    ("generic", PREF, "scores", "missing field"),
    ("generic", {**PREF, "responses": ["a", ""]}, "responses[1]", "empty"),
    ("generic", ["not", "an", "object"], None, "JSON object"),
]


@pytest.mark.parametrize(("adapter", "record", "field", "message"), BAD)
def test_bad_records_name_source_row_and_field(adapter, record, field, message):
    with pytest.raises(DataError, match=message) as info:
        adapt(adapter, record, index=7)
    assert (info.value.source, info.value.row, info.value.field) == ("src", 7, field)
    assert str(info.value).startswith("src, row 7")
