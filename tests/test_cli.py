"""The `urpo` command: a tiny YAML run, exact resume, exported model, --print_config over configs/, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from urpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


def fit_args(model_dir: str, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--model.policy.name_or_path",
        model_dir,
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.callbacks.init_args.dirpath",
        str(out / "checkpoints"),
        "--data.sources",
        f'[{{"adapter": "gsm8k", "path": "{ROOT}/src/urpo/data/samples/gsm8k_train.jsonl"}}]',
        *extra,
    ]


def run_fit(model_dir: str, out: Path, *extra: str) -> None:
    main(fit_args(model_dir, out, *extra))


def exported_weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_writes_metrics_samples_checkpoints_and_a_loadable_model(tiny_model_dir, tmp_path, capsys):
    run_fit(tiny_model_dir, tmp_path)
    run = tmp_path / "tiny" / "version_0"
    # the run ends by printing where its picture is (the demo's last lines), and the picture is there
    assert f"curves:      {run / 'curves.png'}" in capsys.readouterr().out
    assert (run / "curves.png").stat().st_size > 10_000
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "reward/mean",
        "train/loss",
        "time/update",
        "throughput/tokens_per_s",
        "reward/math_verifier/accuracy",
    ):
        assert column in header
    assert (run / "samples.jsonl").read_text().count("\n") >= 1
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"last.ckpt", "epoch=0-step=2.ckpt"}
    assert set(exported_weights(run / "hf_model")) >= {"model.embed_tokens.weight"}


def test_resume_continues_exactly(tiny_model_dir, tmp_path):
    """4 steps straight == 2 steps, then resume from the step-2 checkpoint for 2 more (same seed)."""
    run_fit(tiny_model_dir, tmp_path / "straight")
    run_fit(tiny_model_dir, tmp_path / "split", "--trainer.max_steps", "2")
    checkpoint = tmp_path / "split" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["global_step"] == 2
    run_fit(tiny_model_dir, tmp_path / "split", "--ckpt_path", "last")
    straight = exported_weights(tmp_path / "straight" / "tiny" / "version_0" / "hf_model")
    resumed = exported_weights(tmp_path / "split" / "tiny" / "version_1" / "hf_model")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_print_config_resolves_every_shipped_config(config):
    out = subprocess.run(
        [sys.executable, "-m", "urpo.cli", "fit", "--config", str(ROOT / "configs" / config), "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "num_generations" in out.stdout and "sources" in out.stdout


def test_unknown_option_is_rejected_before_training(tiny_model_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "urpo.cli", "fit", "--config", TINY, "--model.grpo.num_generaton", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "num_generaton" in out.stderr


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  grpo: [unclosed\n")
    out = subprocess.run(
        [sys.executable, "-m", "urpo.cli", "fit", "--config", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "bad.yaml" in out.stderr


def test_missing_model_path_fails_fast(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "urpo.cli",
            "fit",
            "--config",
            TINY,
            "--model.policy.name_or_path",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "missing" in out.stderr and "does not exist" in out.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tiny_model_dir, tmp_path):
    """SIGKILL mid-training loses at most one checkpoint interval: `--ckpt_path last` continues from it."""
    import os
    import signal
    import time

    command = [sys.executable, "-m", "urpo.cli", *fit_args(tiny_model_dir, tmp_path, "--trainer.max_steps", "1000")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(checkpoints.glob("epoch=0-step=4.ckpt")):
        time.sleep(0.5)
    time.sleep(0.5)  # let the run get into the next interval before the kill
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    periodic = max(torch.load(p, weights_only=False)["global_step"] for p in checkpoints.glob("epoch=*.ckpt"))
    # Lightning writes the periodic file first and last.ckpt second: a kill between the two leaves last.ckpt one
    # interval (2 steps in tiny.yaml) behind. `--ckpt_path last` resumes from last.ckpt, so that is the resume point.
    saved = torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"]
    assert saved >= 4 and periodic - saved in (0, 2)
    run_fit(tiny_model_dir, tmp_path, "--ckpt_path", "last", "--trainer.max_steps", str(saved + 2))
    resumed = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == saved + 2
    # The resumed run logged only the two steps after the checkpoint: it did not start over.
    rows = (tmp_path / "tiny" / "version_1" / "metrics.csv").read_text().splitlines()
    steps = sorted({int(line.split(",")[rows[0].split(",").index("step")]) for line in rows[1:]})
    assert steps == [saved, saved + 1]


def test_urpo_data_prints_the_mixture_and_rendered_prompts(tiny_model_dir, capsys):
    samples = ROOT / "src" / "urpo" / "data" / "samples"
    sources = (
        f'[{{"adapter": "gsm8k", "path": "{samples}/gsm8k_train.jsonl"}},'
        f' {{"adapter": "hh_rlhf", "path": "{samples}/hh_rlhf_harmless_base_test.jsonl"}}]'
    )
    main(
        [
            "data",
            "--config",
            TINY,
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--data.sources",
            sources,
            "--data.max_prompt_tokens",
            "1500",
            "--batches",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "rows per batch: {'verifiable': 2, 'preference': 2}" in out
    assert "--- verifiable prompt" in out and "--- preference prompt" in out
    assert "[Response A]" in out and "<ranking>" in out
    assert "data/dropped_" in out  # the tiny tokenizer makes long prompts: some HH-RLHF rows are over 1500 tokens


def test_validate_reports_rewards_per_kind(tiny_model_dir, tmp_path):
    samples = ROOT / "src" / "urpo" / "data" / "samples"
    main(
        [
            "validate",
            "--config",
            TINY,
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--data.sources",
            f'[{{"adapter": "gsm8k", "path": "{samples}/gsm8k_train.jsonl"}}]',
            "--data.val_sources",
            f'[{{"adapter": "gsm8k", "path": "{samples}/gsm8k_train.jsonl", "limit": 4}}]',
        ]
    )
    header = (tmp_path / "tiny" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/reward/verifiable_mean" in header and "val/reward/math_verifier/accuracy" in header
