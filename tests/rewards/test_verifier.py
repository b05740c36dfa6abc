"""MathVerifier: answer extraction and math-verify equivalence, table-driven, including malformed completions."""

from __future__ import annotations

import pytest
import torch

from urpo.data.schema import VerifiableRow
from urpo.rewards.base import Episode
from urpo.rewards.verifier import MathVerifier, last_tagged


def episode(gold: str, *completions: str) -> Episode:
    row = VerifiableRow(source="table", index=0, prompt="q", answer=gold)
    return Episode(row=row, messages=[], completions=list(completions), finish_reasons=["stop"] * len(completions))


@pytest.mark.parametrize(
    ("gold", "completion", "correct"),
    [
        ("72", "Natalia sold 48 + 24 = 72 clips. \\boxed{72}", True),
        ("0.5", "so the answer is \\boxed{\\frac{1}{2}}", True),
        ("1/2", "\\boxed{0.5}", True),
        ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", True),
        ("18", "\\boxed{17}", False),
        ("18", "first \\boxed{18} then I changed my mind: \\boxed{19}", False),  # the LAST box counts
        ("18", "the answer is 18", False),  # no box: no answer in the required format
        ("18", "\\boxed{18", False),  # cut off inside the box
        ("18", "\\boxed{}", False),
        ("18", "", False),
        ("18", "\\boxed{" + "9" * 5000 + "}", False),  # over max_answer_chars: judged wrong without parsing
        ("5", "\\boxed{\\frac{10}{2}}", True),
        ("(x+1)^2", "\\boxed{x^2+2x+1}", True),
        ("1000", "\\boxed{1,000}", True),
    ],
)
def test_correctness(gold, completion, correct):
    result = MathVerifier().score([episode(gold, completion)])
    assert result.rewards.tolist() == [[1.0 if correct else 0.0]]


def test_format_reward_is_added_for_any_extracted_answer():
    result = MathVerifier(format_reward=0.1).score([episode("4", "\\boxed{4}", "\\boxed{5}", "four")])
    torch.testing.assert_close(result.rewards, torch.tensor([[1.1, 0.1, 0.0]]))
    assert result.metrics == pytest.approx({"accuracy": 1 / 3, "format_rate": 2 / 3})


def test_answer_tag_mode_reads_the_last_tag():
    verifier = MathVerifier(answer_tag="answer")
    result = verifier.score([episode("7", "<answer>6</answer> no, <ANSWER> 7 </ANSWER>", "\\boxed{7}")])
    assert result.rewards.tolist() == [[1.0, 0.0]]
    assert last_tagged("no tags", "answer") is None


def test_deterministic_over_repeats():
    completions = ["\\boxed{3}", "\\boxed{4}", "x"]
    first = MathVerifier().score([episode("3", *completions)]).rewards
    assert torch.equal(first, MathVerifier().score([episode("3", *completions)]).rewards)


def test_verifier_serves_verifiable_rows_by_default():
    assert MathVerifier().kinds == ("verifiable",)
    assert MathVerifier().name == "math_verifier"
