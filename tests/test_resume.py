"""Exact resume: N straight steps equal k steps + ``--ckpt_path last`` + N-k steps, in what was sampled, the rewards,
the logged metrics and the final weights, with a reward that varies within groups (so weights depend on samples)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.test_cli import exported_weights, run_fit

# Wall-clock figures differ between any two runs; everything else must not.
_TIMING_PREFIXES = ("time/", "throughput/")


def _reward_args(record: Path) -> list[str]:
    rewards = [{"class_path": "tests.fault_rewards.OddTokenShare", "init_args": {"record": str(record)}}]
    return ["--model.rewards", json.dumps(rewards)]


def _steps(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def _metrics(*files: Path) -> dict[int, dict[str, str]]:
    rows: dict[int, dict[str, str]] = {}
    for file in files:
        with file.open() as handle:
            for row in csv.DictReader(handle):
                kept = {k: v for k, v in row.items() if v != "" and not k.startswith(_TIMING_PREFIXES)}
                step = int(kept.pop("step"))
                assert step not in rows, f"step {step} logged twice"
                rows[step] = kept
    return rows


def _sample_steps(file: Path) -> list[int]:
    return sorted({json.loads(line)["step"] for line in file.read_text().splitlines()})


def test_resume_from_a_checkpoint_reproduces_the_straight_run(tiny_model_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_fit(tiny_model_dir, straight, *_reward_args(tmp_path / "straight.jsonl"))
    run_fit(tiny_model_dir, split, "--trainer.max_steps", "2", *_reward_args(tmp_path / "split.jsonl"))
    run_fit(tiny_model_dir, split, "--ckpt_path", "last", *_reward_args(tmp_path / "split.jsonl"))

    a, b = _steps(tmp_path / "straight.jsonl"), _steps(tmp_path / "split.jsonl")
    assert len(a) == len(b) == 4
    rewards = torch.tensor([step["rewards"] for step in a])
    assert (rewards.std(dim=-1) > 0).any(), "the reward must vary within groups for this test to mean anything"
    for step, (x, y) in enumerate(zip(a, b)):
        assert x["ids"] == y["ids"], f"step {step}: the resumed run sampled other tokens"
        assert x["rewards"] == y["rewards"], f"step {step}"

    logs = straight / "tiny", split / "tiny"
    straight_metrics = _metrics(logs[0] / "version_0" / "metrics.csv")
    split_metrics = _metrics(logs[1] / "version_0" / "metrics.csv", logs[1] / "version_1" / "metrics.csv")
    assert sorted(straight_metrics) == sorted(split_metrics) == [0, 1, 2, 3]
    for step in straight_metrics:
        assert straight_metrics[step] == split_metrics[step], f"metrics of step {step}"

    # samples.jsonl names steps as metrics.csv does (tiny.yaml writes samples every 2 steps).
    assert _sample_steps(logs[0] / "version_0" / "samples.jsonl") == [0, 2]
    assert _sample_steps(logs[1] / "version_1" / "samples.jsonl") == [2]

    resumed = exported_weights(logs[1] / "version_1" / "hf_model")
    for name, tensor in exported_weights(logs[0] / "version_0" / "hf_model").items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_straight_run(tiny_model_dir, tmp_path):
    """SIGKILL mid-run, then ``--ckpt_path last``: the steps after the checkpoint are redone exactly as a straight
    run makes them (the killed run's own attempt at them is lost with it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_cli import ROOT, fit_args

    steps = 6
    run_fit(
        tiny_model_dir,
        tmp_path / "straight",
        "--trainer.max_steps",
        str(steps),
        *_reward_args(tmp_path / "straight.jsonl"),
    )
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "urpo.cli",
        *fit_args(tiny_model_dir, killed, "--trainer.max_steps", "1000"),
        *_reward_args(tmp_path / "killed.jsonl"),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoints" / "epoch=0-step=2.ckpt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 2 <= saved < steps
    run_fit(
        tiny_model_dir,
        killed,
        "--ckpt_path",
        "last",
        "--trainer.max_steps",
        str(steps),
        *_reward_args(tmp_path / "resumed.jsonl"),
    )

    straight, resumed = _steps(tmp_path / "straight.jsonl"), _steps(tmp_path / "resumed.jsonl")
    assert len(resumed) == steps - saved
    assert resumed == straight[saved:]
    straight_metrics = _metrics(tmp_path / "straight" / "tiny" / "version_0" / "metrics.csv")
    resumed_metrics = _metrics(killed / "tiny" / "version_1" / "metrics.csv")
    assert sorted(resumed_metrics) == list(range(saved, steps))
    for step, values in resumed_metrics.items():
        assert values == straight_metrics[step], f"metrics of step {step}"
    final = exported_weights(killed / "tiny" / "version_1" / "hf_model")
    for name, tensor in exported_weights(tmp_path / "straight" / "tiny" / "version_0" / "hf_model").items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0, msg=name)
