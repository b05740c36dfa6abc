"""tools.evidence.judgment_steps: which step of a warm start's judgment (own answer, checks, verdict) goes wrong."""

import pytest

from tools.evidence.judgment_steps import STEPS, Judgment, main, read_judgment, score_steps


def test_a_judgment_is_read_step_by_step_and_a_missing_step_is_none():
    text = "\\boxed{58} \\boxed{58} no \\boxed{56} yes <ranking>B > A</ranking>"
    assert read_judgment(text) == Judgment(58, (58, 56), ("no", "yes"), "B")
    assert read_judgment("\\boxed{58} \\boxed{58} yes \\boxed{56} no") is None  # no verdict
    assert read_judgment("\\boxed{58} \\boxed{58} yes <ranking>A > B</ranking>") is None  # one check


def test_a_judge_whose_checks_guess_a_position_is_told_apart_from_one_whose_verdict_ignores_its_checks():
    truths, shown, right = [58, 72], [(58, 56), (82, 72)], ["A", "B"]
    position_guess = [  # own answers right, checks always "no yes", verdict follows the checks
        read_judgment("\\boxed{58} \\boxed{58} no \\boxed{56} yes <ranking>B > A</ranking>"),
        read_judgment("\\boxed{72} \\boxed{82} no \\boxed{72} yes <ranking>B > A</ranking>"),
    ]
    assert score_steps(position_guess, truths, shown, right) == {
        "parsed": 1.0,
        "own_right": 1.0,
        "copies_right": 1.0,
        "checks_consistent": 0.5,
        "reasoning_right": 0.5,
        "verdict_follows_checks": 1.0,
        "verdict_right": 0.5,
    }
    ignores_checks = [Judgment(58, (58, 56), ("yes", "no"), "B"), None]  # right checks, verdict against them
    assert score_steps(ignores_checks, truths, shown, right) == {
        "parsed": 0.5,
        "own_right": 0.5,
        "copies_right": 0.5,
        "checks_consistent": 0.5,
        "reasoning_right": 0.5,
        "verdict_follows_checks": 0.0,
        "verdict_right": 0.0,
    }
    miscopied = [Judgment(58, (58, 55), ("yes", "no"), "A"), Judgment(71, (82, 71), ("no", "yes"), "B")]
    scores = score_steps(miscopied, truths, shown, right)
    assert scores["copies_right"] == 0.0 and scores["checks_consistent"] == 1.0 and scores["reasoning_right"] == 0.0


def test_the_command_scores_a_saved_warm_start(tmp_path, capsys):
    from tools.evidence.warm_start import WarmStartConfig, build_warm_start

    lenient = WarmStartConfig(hidden=32, steps=2, batch_size=4, target_solve=0.0, target_judge=0.0)
    build_warm_start(tmp_path / "w", 0, lenient)
    scores = main([str(tmp_path / "w"), "--problems", "3"])[str(tmp_path / "w")]
    assert tuple(scores) == STEPS
    assert all(v == pytest.approx(round(v * 3) / 3) for v in scores.values())  # shares of 3 problems
    assert f"| {tmp_path / 'w'} | " in capsys.readouterr().out
