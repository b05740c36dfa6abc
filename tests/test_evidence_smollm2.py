"""The real-model evidence world (tools/evidence/smollm2.py, --world smollm2): its truth is right, its reader and
verifier agree, its gate fails loudly, and the whole pipeline runs end to end on a tiny stand-in for SmolLM2."""

from __future__ import annotations

import json
import re

import pytest

from tools.evidence.smollm2 import (
    NO_ANSWER,
    POOLS,
    NumberVerifier,
    RealWorldConfig,
    answer_number,
    split_problems,
    write_world,
)
from tools.evidence.world import read_jsonl
from tools.tiny_model import build_tiny_model

_SUM = re.compile(r"What is (\d+) \+ (\d+)\?")
_WORDS = re.compile(r"\w+ has (\d+) \w+ and gets (\d+) more\. How many \w+ are there now\?")


def _truth(prompt: str) -> int:
    match = _SUM.fullmatch(prompt) or _WORDS.fullmatch(prompt)
    return int(match.group(1)) + int(match.group(2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("smollm2_world"), RealWorldConfig())


def test_pools_are_disjoint_and_a_sum_and_its_word_problem_share_one_pool():
    pools = split_problems(RealWorldConfig())
    problems = [p for name in POOLS for kind in ("verifiable", "open") for p in pools[name][kind]]
    assert len(problems) == len(set(problems)) == 18 * 9
    pool_of = {(p.a, p.b): name for name in POOLS for kind in ("verifiable", "open") for p in pools[name][kind]}
    assert len(pool_of) == len(problems)  # each (a, b) asked in one form only
    assert len(pools["heldout"]["open"]) == len(pools["heldout"]["verifiable"]) == 25


def test_rows_carry_the_right_truth_and_open_rows_none(world):
    train = read_jsonl(world["train"])
    assert {r["kind"] for r in train} == {"verifiable", "preference", "open"}
    for record in train:
        if record["kind"] == "verifiable":
            assert int(record["answer"]) == _truth(record["prompt"]) and _SUM.fullmatch(record["prompt"])
        elif record["kind"] == "open":
            assert set(record) == {"kind", "prompt"} and _WORDS.fullmatch(record["prompt"])
        else:
            best = max(range(2), key=lambda i: record["scores"][i])
            assert answer_number(record["responses"][best]) == _truth(record["prompt"]) and record["scores"][best] == 0
            worse = record["responses"][1 - best]
            assert worse == NO_ANSWER or 0 < abs(answer_number(worse) - _truth(record["prompt"])) <= 2
    train_prompts = {r["prompt"] for r in train}
    for prefix in ("eval", "check"):
        for kind in ("open", "verifiable"):
            rows = read_jsonl(world[f"{prefix}_{kind}"])
            assert rows and all(r["truth"] == _truth(r["prompt"]) for r in rows)
            assert not {r["prompt"] for r in rows} & train_prompts
        assert not {r["prompt"] for r in read_jsonl(world[f"{prefix}_preference"])} & train_prompts
    truths = read_jsonl(world["truth_open_train"])
    assert {t["prompt"] for t in truths} == {r["prompt"] for r in train if r["kind"] == "open"}


def test_answers_are_read_the_same_way_by_the_evaluation_and_the_reward():
    replies = [
        "Mia has 5 cards and gets 4 more, so she has 5 + 4 = 9 cards.\nThere are now 9 cards. Mia has 5 +",
        "The answer is 1,024.",
        "I am not sure.",
    ]
    assert [answer_number(r) for r in replies] == [9, 1024, None]  # the equation's result, else the last number
    verifier = NumberVerifier()
    assert [verifier.extract(r) for r in replies] == ["9", "1024", None]
    assert verifier.is_correct(verifier.extract(replies[0]), "9")


def test_a_pretrained_model_below_its_targets_fails_loudly(tmp_path, world):
    from tools.evidence.pretrained import GateConfig, PretrainedGateError, prepare_pretrained
    from tools.evidence.warm_start import WarmStartError

    model = build_tiny_model(tmp_path / "tiny")  # random weights: solves nothing
    files = {k: str(v) for k, v in world.items()}
    missed = r"missed its targets on the check sets: open_accuracy 0\.000 < 0\.15"
    with pytest.raises(PretrainedGateError, match=missed):
        prepare_pretrained(tmp_path / "start", files, GateConfig(model=str(model)))
    assert issubclass(PretrainedGateError, WarmStartError)
    failed = json.loads((tmp_path / "start" / "pretrained_failed.json").read_text())
    assert {"step", "open_accuracy", "verifiable_accuracy", "referee_accuracy"} <= set(failed["checks"][0])
    assert not (tmp_path / "start" / "pretrained.json").exists()  # never reused


@pytest.mark.slow
def test_one_seed_smoke_run_of_the_smollm2_world_on_a_tiny_stand_in(tmp_path):
    from tools.evidence.run import main

    model = build_tiny_model(tmp_path / "tiny")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--world", "smollm2", "--smoke", "--workers", "1", "--seeds", "0", "--model", str(model)]
    document = main([*argv, "--out", str(out), "--work", str(work)])
    runs = document["runs"]
    assert {"warm_start/0", "urpo/0", "referee/0", "separate_referee/0", "verifiable_only/0"} <= set(runs)
    start = runs["warm_start/0"]
    assert start["checks"][0]["step"] == 0
    assert {"open_accuracy", "verifiable_accuracy", "referee_accuracy", "referee_parsed"} <= set(start["scores"])
    # Step 0 is the pretrained model's own held-out scores, not scored again; then every step.
    history = runs["urpo/0"]["history"]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert {k: v for k, v in history[0].items() if k != "step"} == pytest.approx(start["scores"], abs=1e-6)
    blocks = runs["urpo/0"]["blocks"]  # per-step metrics, as 2-step block means in columns
    assert blocks["step"] == [2] and 0.0 <= blocks["groups/preference_zero_variance_frac"][0] <= 1.0
    table = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in table.split("\n\n")[0].splitlines()) == 5  # header + 4 runs
    assert "Before RL, the pretrained model" in table and "check sets" in table
    for name in ("final_scores.png", "curves.png", "open_rewards.png", "referee.png"):
        assert (out / name).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["world_name"] == "smollm2" and saved["meta"]["rl"]["world"] == "smollm2"
    assert saved["summary"]["comparisons"]["urpo_judging_gain"]["n"] == 1
