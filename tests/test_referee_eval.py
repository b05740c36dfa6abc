"""``urpo eval-referee``: report arithmetic with scripted judges, and a real run on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.rewards.fakes import perfect_judge, ranking, shown_responses
from urpo.errors import ConfigError, DataError
from urpo.referee import RefereeTemplate
from urpo.referee_eval import evaluate_referee, format_table, load_rows, main

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "urpo" / "data" / "samples"


def rewardbench_file(folder: Path) -> Path:
    # Chosen responses carry a higher hidden quality, so the scripted perfect judge is always right.
    records = [
        {"prompt": f"Question {i}?", "chosen": f"good q=1 ({i})", "rejected": f"bad q=0 ({i})", "subset": subset}
        for i, subset in enumerate(["alpacaeval-easy"] * 3 + ["math-prm"] * 2)
    ]
    records.append({"prompt": "broken", "chosen": "", "rejected": "x", "subset": "math-prm"})  # empty: skipped
    path = folder / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def render(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


def run(judge, path: Path, template: RefereeTemplate | None = None) -> dict:
    rows, subsets, skipped = load_rows(str(path), "rewardbench")
    assert skipped == 1
    generate = lambda prompts: [judge(p) for p in prompts]  # noqa: E731
    return evaluate_referee(rows, subsets, generate, template or RefereeTemplate(), render)


def test_perfect_judge_scores_one_everywhere(tmp_path: Path) -> None:
    report = run(perfect_judge, rewardbench_file(tmp_path))
    overall = report["overall"]
    assert overall["rows"] == 5 and overall["judgments"] == 10
    assert overall["accuracy"] == overall["position_consistency"] == overall["consistent_accuracy"] == 1.0
    assert overall["parse_failures"] == 0
    assert overall["first_shown_top"] == 0.5  # chosen shown first in one order of each row, second in the other
    assert {k: v["rows"] for k, v in report["subsets"].items()} == {"alpacaeval-easy": 3, "math-prm": 2}


def test_position_biased_judge_is_half_right_and_never_consistent(tmp_path: Path) -> None:
    report = run(lambda prompt: ranking("A", "B"), rewardbench_file(tmp_path))
    overall = report["overall"]
    assert overall["accuracy"] == 0.5 and overall["accuracy_parsed"] == 0.5
    assert overall["position_consistency"] == 0.0 and overall["consistent_accuracy"] == 0.0
    assert overall["first_shown_top"] == 1.0  # the position bias, measured


def test_both_orders_are_shown_and_failures_counted(tmp_path: Path) -> None:
    prompts: list[str] = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return "no verdict" if len(prompts) % 2 == 0 else perfect_judge(prompt)  # every reversed judgment fails

    report = run(judge, rewardbench_file(tmp_path))
    assert shown_responses(prompts[0]) == shown_responses(prompts[1])[::-1]
    assert shown_responses(prompts[0])[0].startswith("good")  # original order: chosen first
    overall = report["overall"]
    assert overall["parse_failures"] == 5 and overall["parse_failure_reasons"]["no_ranking"] == 5
    assert overall["accuracy"] == 0.5 and overall["accuracy_parsed"] == 1.0
    assert overall["position_consistency"] == 0.0
    assert overall["first_shown_top"] == 1.0  # of the parsed judgments only: chosen shown first, named first
    assert "OVERALL" in format_table(report) and "alpacaeval-easy" in format_table(report)


def test_load_rows_errors_and_limit(tmp_path: Path) -> None:
    rows, subsets, _ = load_rows(str(rewardbench_file(tmp_path)), "rewardbench", limit=2)
    assert len(rows) == 2 and subsets == ["alpacaeval-easy"] * 2
    rows, subsets, _ = load_rows(str(SAMPLES / "hh_rlhf_harmless_base_test.jsonl"), "hh_rlhf", limit=3)
    assert len(rows) == 3 and set(subsets) == {"all"}
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "p"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no preference rows"):
        load_rows(str(empty), "rewardbench")


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_cli_on_the_tiny_model(tiny_model_dir: str, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"report{suffix}"
    argv = [
        "--model",
        tiny_model_dir,
        "--data",
        str(rewardbench_file(tmp_path)),
        "--adapter",
        "rewardbench",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "4",
        "--output",
        str(out),
    ]
    if suffix == ".csv":
        argv += ["--temperature", "0.7"]
    report = main(argv)
    assert "OVERALL" in capsys.readouterr().out
    overall, subsets = report["overall"], report["subsets"]
    # Numbers of a random model are near chance; the counts must add up.
    assert overall["judgments"] == 2 * overall["rows"] == 10
    assert sum(s["rows"] for s in subsets.values()) == overall["rows"]
    assert sum(s["judgments"] for s in subsets.values()) == overall["judgments"]
    assert overall["parse_failures"] == sum(overall["parse_failure_reasons"].values()) <= overall["judgments"]
    for stats in [overall, *subsets.values()]:
        for key in ("accuracy", "position_consistency", "consistent_accuracy", "parse_failure_rate"):
            assert 0.0 <= stats[key] <= 1.0
        assert stats["consistent_accuracy"] <= stats["position_consistency"]
    if suffix == ".json":
        saved = json.loads(out.read_text(encoding="utf-8"))
        assert saved["overall"] == overall and saved["settings"]["decoding"] == "greedy"
    else:
        lines = list(csv.DictReader(out.open(encoding="utf-8")))
        assert [line["subset"] for line in lines] == ["alpacaeval-easy", "math-prm", "OVERALL"]
        assert int(lines[-1]["judgments"]) == 10


def test_cli_is_routed_and_checks_the_output_suffix(tmp_path: Path) -> None:
    from urpo.cli import main as urpo_main

    with pytest.raises(ConfigError, match="json or .csv"):
        urpo_main(["eval-referee", "--model", "x", "--data", "y.jsonl", "--adapter", "hh_rlhf", "--output", "r.txt"])
