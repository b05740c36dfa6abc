"""The evidence tool (tools/evidence): the world's truth is right, and the whole pipeline runs end to end."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from tools.evidence.world import (
    OPEN_OP,
    POOLS,
    VERIFIABLE_OP,
    WorldConfig,
    read_jsonl,
    split_problems,
    write_world,
)

_PROBLEM = re.compile(r"What is (\d+) ([+-]) (\d+)\?")


def _solve(prompt: str) -> int:
    a, op, b = _PROBLEM.fullmatch(prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def _boxed_int(text: str) -> int:
    return int(re.fullmatch(r"\\boxed\{(\d+)\}", text).group(1))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), WorldConfig())


def test_pools_are_disjoint_and_cover_every_problem():
    split = split_problems(WorldConfig())
    pools = [set(split.get(name)) for name in POOLS]
    assert sum(len(p) for p in pools) == len(set().union(*pools)) == 2 * 90 * 9
    assert all(p.op == OPEN_OP for p in split.get("rl_solve", OPEN_OP))


def test_training_rows_carry_the_right_truth_and_open_rows_none(world):
    train = read_jsonl(world["train"])
    kinds = {r["kind"] for r in train}
    assert kinds == {"verifiable", "preference", "open"}
    for record in train:
        if record["kind"] == "verifiable":
            assert " + " in record["prompt"] and int(record["answer"]) == _solve(record["prompt"])
        elif record["kind"] == "open":
            assert set(record) == {"kind", "prompt"} and " - " in record["prompt"]  # the truth stays aside
        else:
            truth = _solve(record["prompt"])
            distances = [abs(_boxed_int(r) - truth) for r in record["responses"]]
            assert record["scores"] == [-float(d) for d in distances]
            assert len(set(record["scores"])) > 1 and len(set(record["responses"])) == len(record["responses"])


def test_kept_aside_truth_and_held_out_sets(world):
    open_prompts = {r["prompt"] for r in read_jsonl(world["train"]) if r["kind"] == "open"}
    truths = read_jsonl(world["truth_open_train"])
    assert {t["prompt"] for t in truths} == open_prompts
    train_prompts = {r["prompt"] for r in read_jsonl(world["train"])}
    for name, op in (("eval_open", OPEN_OP), ("eval_verifiable", VERIFIABLE_OP)):
        rows = read_jsonl(world[name])
        assert rows and all(r["op"] == op and r["truth"] == _solve(r["prompt"]) for r in rows)
        assert not {r["prompt"] for r in rows} & train_prompts
    prefs = read_jsonl(world["eval_preference"])
    assert not {r["prompt"] for r in prefs} & train_prompts


def test_one_seed_two_step_smoke_run_writes_table_and_plots(tmp_path):
    from tools.evidence.run import main

    out = tmp_path / "out"
    document = main(["--smoke", "--workers", "1", "--seeds", "0", "--out", str(out), "--work", str(tmp_path / "work")])
    assert {"urpo/0", "referee/0", "separate_referee/0", "verifiable_only/0", "warm_start/0"} <= set(document["runs"])
    assert [h["step"] for h in document["runs"]["urpo/0"]["history"]] == [0, 1, 2]
    table = (out / "results.md").read_text()
    main_table = table.split("\n\n")[0]
    assert sum(line.startswith("| ") for line in main_table.splitlines()) == 5  # header + 4 runs
    for name in ("final_scores.png", "curves.png", "open_rewards.png", "referee.png"):
        assert (out / name).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["urpo"]["open_accuracy"]["values"]
    assert saved["summary"]["comparisons"]["urpo_judging_gain"]["n"] == 1
    blocks = saved["runs"]["urpo/0"]["blocks"]  # per-step metrics kept as block means (columns), not every step
    assert "steps" not in saved["runs"]["urpo/0"] and blocks["step"] == [2]
    assert 0.0 <= blocks["groups/preference_zero_variance_frac"][0] <= 1.0
    assert "Held-out judging accuracy during training (sampled at temperature 1" in table
    assert "Held-out judging accuracy during training (greedy" in table
    verdicts = table.split("How the held-out judgments end")[1].split("\n\n")[1].splitlines()
    assert len(verdicts) == 6 and verdicts[2].startswith("| Warm start")  # header, rule, 4 runs
    parsed = saved["summary"]["urpo"]["referee_parsed"]["values"]
    assert len(parsed) == 1 and 0.0 <= parsed[0] <= 1.0
    assert saved["summary"]["comparisons"]["urpo_sampled_judging_gain"]["n"] == 1
    assert saved["summary"]["urpo"]["cpu_seconds"]["mean"] > 0
    machine = saved["meta"]["machine"]  # the float path the numbers came from, named in the table
    assert machine["aten_kernels"] == torch.backends.cpu.get_cpu_capability() and machine["torch"] == torch.__version__
    assert f"Machine: {machine['cpu']} (" in table and f"ATen kernels {machine['aten_kernels']}" in table

    # The table and plots can be redrawn from results.json alone (the same table: nothing is lost in the summary).
    from tools.evidence.report import main as redraw

    (out / "results.md").unlink()
    redraw([str(out)])
    assert (out / "results.md").read_text() == table

    # A warm start reused from the work folder was trained by an earlier run: named, and kept out of the seconds.
    from tools.evidence.report import write_report

    saved["runs"]["warm_start/0"]["reused"] = True
    again = write_report(saved["runs"], saved["meta"], tmp_path / "again")
    assert again["summary"]["warm_start"]["seconds"]["values"] == []
    redrawn = (tmp_path / "again" / "results.md").read_text()
    assert "trained by an earlier run (not in the seconds): warm_start/0." in redrawn


def test_warm_start_that_misses_its_targets_fails_loudly_and_one_that_meets_them_is_reused(tmp_path):
    from tools.evidence.warm_start import WarmStartConfig, WarmStartError, build_warm_start, missed_targets

    tiny = WarmStartConfig(hidden=32, steps=2, batch_size=4, extra_steps=1, max_extra_cycles=1, draws=1)
    with pytest.raises(WarmStartError, match=r"missed its targets after 3 steps: open_accuracy 0\.000 < 0\.50"):
        build_warm_start(tmp_path / "bad", 0, tiny)
    missed = tmp_path / "bad" / "draw_0"
    assert not (tmp_path / "bad" / "warm_start.json").exists()  # never reused...
    assert "missed its targets" in (missed / "warm_start_failed.json").read_text()  # ...but kept to inspect
    # The same seed and settings again: the failure is raised again without training (the model file is untouched).
    weights = (missed / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(WarmStartError, match=r"missed its targets after 3 steps.*\(reused: "):
        build_warm_start(tmp_path / "bad", 0, tiny)
    assert (missed / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(WarmStartError, match=r"missed its targets after 4 steps"):  # other settings: trained anew
        build_warm_start(tmp_path / "bad", 0, replace(tiny, steps=3))
    lenient = WarmStartConfig(hidden=32, steps=2, batch_size=4, target_solve=0.0, target_judge=0.0, target_verdicts=0.0)
    first = build_warm_start(tmp_path / "ok", 0, lenient)
    assert first["train_steps"] == 2 and len(first["checks"]) == 1 and "reused" not in first
    assert first["draw"] == 0 and first["missed_draws"] == []
    assert (tmp_path / "ok" / "warm_start.json").exists() and not (tmp_path / "ok" / "draw_0").exists()
    again = build_warm_start(tmp_path / "ok", 0, lenient)
    assert again["reused"] and again["seconds"] == pytest.approx(first["seconds"])  # its training time, kept
    scores = {"open_accuracy": 0.6, "verifiable_accuracy": 0.4, "referee_accuracy": 0.5, "referee_parsed": 0.9}
    assert missed_targets({**scores, "referee_accuracy": 0.7}, lenient) == []
    # Taught verdicts (the default) must judge well; random ones need only parse: their accuracy is chance.
    assert missed_targets(scores, WarmStartConfig()) == [
        "verifiable_accuracy 0.400 < 0.50",
        "referee_accuracy 0.500 < 0.65",
    ]
    assert missed_targets(scores, WarmStartConfig(verdict_noise=0.5)) == missed_targets(scores, WarmStartConfig())
    assert missed_targets(scores, WarmStartConfig(verdict_noise=1.0)) == [
        "verifiable_accuracy 0.400 < 0.50",
        "referee_parsed 0.900 < 0.95",
    ]


def test_a_seed_whose_first_draw_misses_its_gate_passes_on_another_draw_reused_by_the_next_run(tmp_path, monkeypatch):
    import tools.evidence.warm_start as warm_start
    from tools.evidence.warm_start import WarmStartConfig, WarmStartError, build_warm_start, init_seed

    tiny = WarmStartConfig(hidden=32, steps=2, batch_size=4, target_solve=0.0, target_judge=0.0, draws=2)
    assert init_seed(3, 0) == 3 and len({init_seed(s, d) for s in range(50) for d in range(3)}) == 150
    real_train, trained = warm_start.train, []

    def first_draw_misses(model, tokenizer, split, cfg, seed, world, draw=0):
        trained.append(draw)
        if draw == 0:  # as a draw whose judging stalls: its gate misses
            raise WarmStartError(f"warm start (seed {seed}) missed its targets after 2 steps: referee_accuracy")
        return real_train(model, tokenizer, split, cfg, seed, world, draw)

    monkeypatch.setattr(warm_start, "train", first_draw_misses)
    passed = build_warm_start(tmp_path / "w", 3, tiny)
    assert trained == [0, 1] and passed["draw"] == 1 and passed["train_steps"] == 2
    assert passed["missed_draws"] == ["warm start (seed 3) missed its targets after 2 steps: referee_accuracy"]
    assert (tmp_path / "w" / "draw_0" / "warm_start_failed.json").exists()  # the draw that missed, kept to inspect
    assert (tmp_path / "w" / "model.safetensors").exists()  # the passing draw is the warm start RL reads
    assert build_warm_start(tmp_path / "w", 3, tiny)["reused"] and trained == [0, 1]  # nothing trained again
    # One draw only: the passed draw 1 is not a warm start this config allows, and draw 0 misses again (reused).
    with pytest.raises(WarmStartError, match=r"\(reused: .*draw_0"):
        build_warm_start(tmp_path / "w", 3, replace(tiny, draws=1))
    assert trained == [0, 1]
    with pytest.raises(WarmStartError, match=r"every one of the 2 draws of warm start \(seed 4\) missed"):
        monkeypatch.setattr(warm_start, "train", lambda *a, **k: (_ for _ in ()).throw(WarmStartError("missed")))
        build_warm_start(tmp_path / "x", 4, tiny)


def test_a_seed_whose_warm_start_misses_its_gate_is_dropped_and_named_while_the_others_go_on(tmp_path):
    from tools.evidence.run import schedule, surviving_seeds
    from tools.evidence.runs import RLConfig
    from tools.evidence.warm_start import WarmStartConfig, WarmStartError
    from tools.evidence.world import WorldConfig, write_world

    files = {k: str(v) for k, v in write_world(tmp_path / "world", WorldConfig()).items()}
    strict = WarmStartConfig(hidden=32, steps=2, batch_size=4, extra_steps=1, max_extra_cycles=0)
    lenient = replace(strict, target_solve=0.0, target_judge=0.0, target_verdicts=0.0)
    common = {"kind": "warm", "files": files, "rl": asdict(replace(RLConfig(), eval_limit=2)), "deps": []}
    tasks = {
        "warm_start/0": {**common, "seed": 0, "out": str(tmp_path / "w0"), "warm": asdict(strict)},
        "warm_start/1": {**common, "seed": 1, "out": str(tmp_path / "w1"), "warm": asdict(lenient)},
        # Stand-ins for the RL runs that need the failed warm start: never started (they would fail: no kind).
        "urpo/0": {"kind": "not run", "deps": ["warm_start/0"]},
        "referee/0": {"kind": "not run", "deps": ["warm_start/0"]},
    }
    logged = []
    done, failed = schedule(tasks, workers=1, log=logged.append)
    assert set(done) == {"warm_start/1"} and set(failed) == {"warm_start/0"}
    assert "open_accuracy 0.000 < 0.50" in failed["warm_start/0"]
    assert any("warm_start/0: FAILED its gate, dropping urpo/0, referee/0" in line for line in logged)
    plan = {"urpo/0": {"deps": ["warm_start/0"]}, "urpo/1": {"deps": ["warm_start/1"]}}
    assert surviving_seeds([0, 1], plan, failed) == [1]
    with pytest.raises(WarmStartError, match="every warm start missed its gate"):
        surviving_seeds([0], plan, failed)


def test_warm_start_judging_examples_keep_the_reasoning_and_teach_the_verdict_only_when_asked():
    from tools.evidence.warm_start import judge_example
    from tools.evidence.world import Problem

    problem = Problem(45, "+", 3)
    taught, rankings, flipped = set(), set(), 0
    for seed in range(40):
        _, target = judge_example(problem, 0.0, random.Random(seed), verdict_noise=0.0)
        _, coin = judge_example(problem, 0.0, random.Random(seed), verdict_noise=1.0)
        checks, verdict = target.split(" <ranking>")
        assert coin.startswith(checks + " <ranking>")  # same own answer and checks
        assert checks.startswith("\\boxed{48} ")
        right = "A > B" if checks.index("yes") < checks.index("no") else "B > A"
        assert verdict == right + "</ranking>"
        taught.add(verdict)
        rankings.add(coin.split("<ranking>")[1])
        flipped += coin.split("<ranking>")[1] != verdict
    assert taught == {"A > B</ranking>", "B > A</ranking>"}
    assert rankings == {"A > B</ranking>", "B > A</ranking>"}
    assert 8 <= flipped <= 32  # coin flips: wrong about half the time (40 draws)


def test_a_partly_noisy_verdict_follows_the_checks_three_times_in_four_at_noise_one_half():
    from tools.evidence.warm_start import judge_example
    from tools.evidence.world import Problem

    rng, follows = random.Random(0), 0
    for _ in range(2000):
        _, target = judge_example(Problem(45, "+", 3), 0.0, rng, verdict_noise=0.5)
        checks, verdict = target.split(" <ranking>")
        follows += verdict.startswith("A > B" if checks.index("yes") < checks.index("no") else "B > A")
    assert 0.72 < follows / 2000 < 0.78  # 1 - 0.5 / 2 = 0.75 (binomial std 0.01)


def test_truth_agreement_counts_pairs_with_different_distances_and_halves_ties():
    from tools.evidence.judges import (
        MISSING_ANSWER_DISTANCE,
        true_distances,
        truth_agreement,
    )

    # Answers 12 (right), 13 (off by one), no answer, 12 again; truth 12.
    distances = true_distances(["\\boxed{12}", "so \\boxed{13}", "no idea", "\\boxed{12}"], 12)
    assert distances == [0, 1, MISSING_ANSWER_DISTANCE, 0]
    # Pairs with different distances: (0,1) (0,2) (1,2) (1,3) (2,3) = 5; (0,3) is skipped (both right).
    # Rewards order (0,1) right, (0,2) tie -> 0.5, (1,2) wrong, (1,3) right, (2,3) right: 3.5 of 5.
    hits, pairs = truth_agreement([1.0, 0.5, 1.0, 1.2], distances)
    assert (hits, pairs) == (3.5, 5)
    assert truth_agreement([float("nan"), 0.0], [0, 1]) == (0.0, 0)  # an unrewarded answer makes no pair


def test_stats_are_mean_and_sample_std_ignoring_missing_values():
    from tools.evidence.report import stats

    assert stats([0.5, 0.7, float("nan"), None]) == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.1414213562),
        "values": [0.5, 0.7],
    }
    assert stats([0.4]) == {"mean": 0.4, "std": 0.0, "values": [0.4]}
    assert stats([]) == {"mean": None, "std": None, "values": []}


def test_paired_test_and_step_blocks():
    from tools.evidence.report import blocks, paired_test

    rising = paired_test([0.05, 0.07, 0.06])  # t = 0.06 / (0.01 / sqrt 3) = 10.4 > 2.920
    assert rising["positive"] == 3 and rising["t"] == pytest.approx(10.392, abs=1e-3) and rising["significant"]
    mixed = paired_test([0.05, -0.04, 0.01])
    assert mixed["positive"] == 2 and not mixed["significant"]
    assert paired_test([0.1])["t"] is None
    # No spread: no t (JSON has no infinity); a sign test decides, which needs 5 seeds above 0 (0.5 ** 5 < 5%).
    equal = paired_test([0.28] * 5)
    assert equal["t"] is None and equal["significant"] and equal["positive"] == 5
    few = paired_test([0.28] * 4)
    assert few["t"] is None and not few["significant"]
    assert not paired_test([0.0, 0.0])["significant"]
    assert not paired_test([-0.1] * 6)["significant"]
    # Differences equal up to rounding are no spread either (this gave t = 1.9e14 and "significant" on 2 seeds).
    rounded = paired_test([0.010416666666666741, 0.010416666666666630])
    assert rounded["std"] > 0 and rounded["t"] is None and not rounded["significant"]
    steps = [{"step": i + 1, "x": float(i)} for i in range(25)] + [{"step": 26, "x": float("nan")}]
    assert blocks(steps) == {"step": [10, 20, 26], "x": [4.5, 14.5, 22.0]}
    # A metric some blocks never measured keeps its place: None in those blocks, not a shorter column.
    sparse = [{"step": 1, "x": 1.0}, {"step": 2, "x": 3.0, "y": 5.0}, {"step": 3, "x": 2.0}, {"step": 4}]
    assert blocks(sparse, size=2) == {"step": [2, 4], "x": [2.0, 2.0], "y": [5.0, None]}


def test_diagnosis_summarises_what_grpo_saw_on_preference_rows():
    from tools.evidence.diagnose import markdown, signal, solve_prompt, summarize

    assert solve_prompt("What is 17 - 5?") == 12 and solve_prompt("What is 17 + 5?") == 22
    steps = [
        {
            "step": i + 1,
            "groups/preference_zero_variance_frac": z,
            "reward/preference_group_spread": 0.25,
            "reward/preference_reward/referee_accuracy": a,
            "rows/preference": 2.0,
        }
        for i, (z, a) in enumerate([(1.0, 0.5), (0.5, 0.5), (0.5, 0.75), (0.0, 0.75)])
    ]
    assert signal(steps, 0, 2)["zero_variance_frac"] == 0.75 and signal(steps, 2, 4)["sampled_accuracy"] == 0.75
    history = [{"step": 0, "referee_accuracy": 0.5}, {"step": 4, "referee_accuracy": 0.6}]
    row = summarize({"steps": steps, "history": history, "seconds": 1.0})
    assert row["judging_gain"] == pytest.approx(0.1) and row["first_third"]["zero_variance_frac"] == 1.0
    table = markdown({"v/0": {"variant": "v", "seed": 0, "settings": {"lr": 2e-4}, **row}})
    assert '| v | {"lr": 0.0002} | 0 | 50.0 | 0.250 | 50.0 → 75.0 | 50.0 → 60.0 | +10.0 |' in table


def test_the_command_chooses_what_the_warm_start_teaches_the_referee_to_conclude():
    from tools.evidence.run import configs, parse_args
    from tools.evidence.warm_start import WarmStartConfig

    assert configs(parse_args([]))[1].verdict_noise == WarmStartConfig.verdict_noise
    assert configs(parse_args(["--warm-verdict-noise", "1"]))[1].verdict_noise == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--warm-verdict-noise", "always_a"])
    assert configs(parse_args([]))[1].draws == WarmStartConfig.draws == 2
    assert configs(parse_args(["--warm-draws", "1"]))[1].draws == 1  # the gate's old rule: one draw, or the seed drops


def test_the_documented_results_files_stay_small_and_keep_blocks_as_columns():
    """Issue 13 keeps every results.json in the repository "under a few hundred KB": per-step metrics as 10-step
    block means in columns (a metric's name once per run), so a run of more seeds does not grow it by its key names."""
    files = sorted(Path("docs/evidence").rglob("results.json"))
    assert len(files) >= 3  # the arithmetic world, its portable float path, SmolLM2
    for path in files:
        assert path.stat().st_size < 400_000, f"{path}: {path.stat().st_size} bytes"
        for name, run in json.loads(path.read_text())["runs"].items():
            if "blocks" in run:
                columns = run["blocks"]
                assert isinstance(columns, dict) and columns["step"], f"{path}: {name}"
                assert all(len(values) == len(columns["step"]) for values in columns.values()), f"{path}: {name}"


def test_a_redrawn_summary_equals_the_runs_own_where_the_probe_measured_steps_unevenly(tmp_path):
    """The run summarises what it saves (10-step block means): redrawn from results.json, every figure is the same,
    even where the open-row probe measured all steps of one block and one step of the others."""
    from tools.evidence.names import JUDGE_NAMES
    from tools.evidence.report import main as redraw
    from tools.evidence.report import write_report

    document = json.loads(Path("docs/evidence/results.json").read_text())
    name, key = f"urpo/{document['meta']['seeds'][0]}", f"reward/{JUDGE_NAMES['urpo']}/truth_agreement"
    columns = document["runs"][name].pop("blocks")  # back to steps: each block's means on all ten of its steps
    steps = []
    for block, last in enumerate(columns["step"]):
        for offset in range(9, -1, -1):
            row = {k: v[block] for k, v in columns.items() if k not in ("step", key) and v[block] is not None}
            if block == 0 or offset == 0:
                row[key] = 0.9 if block == 0 else 0.1
            steps.append({"step": last - offset, **row})
    document["runs"][name]["steps"] = steps
    first = write_report(document["runs"], document["meta"], tmp_path)
    redraw([str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == first["summary"]
    block_means = [0.9] + [0.1] * (len(columns["step"]) - 1)  # each block's own mean, whatever its measured steps
    agreement = first["summary"]["urpo"]["reward_truth_agreement"]["values"][0]
    assert agreement == pytest.approx(sum(block_means) / len(block_means), abs=1e-6)
