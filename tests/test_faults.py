"""The fault tour: every way a run could hang, lose work, or fail without saying why (issue "runs that never hang,
resume exactly, survive preemption, and fail with one clear line"), each kept fixed by a test.

Covered elsewhere and listed here for the tour: a reward that never scores, non-finite gradients, an infinite reward
and a reward of the wrong type (tests/test_progress.py); exact resume in samples, rewards, metrics and weights
(tests/test_resume.py); kill -9 mid-run then ``--ckpt_path last`` (tests/test_cli.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_cli import ROOT, TINY, fit_args
from urpo.cli import EXIT_BAD_INPUT, EXIT_FAILURE, console_main
from urpo.errors import ConfigError, DataError

SAMPLES = ROOT / "src" / "urpo" / "data" / "samples"


def urpo_fails(capsys, *argv: str) -> tuple[int, str]:
    """Run ``urpo ARGV`` in-process; return its exit status and the one line it printed on stderr."""
    with pytest.raises(SystemExit) as stop:
        console_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return stop.value.code, err[-1] if err else ""


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model weights are loaded: the error must come before."""

    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr("urpo.module.load_model", refuse)


# ---- one clear line ---------------------------------------------------------------------------------------------


def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  grpo:\n    num_generations: 4\n  sampling: [unclosed\n")
    code, line = urpo_fails(capsys, "fit", "--config", str(bad))
    assert code == EXIT_BAD_INPUT
    assert line.startswith(f"urpo: error: {bad}, line 5") and "line 4" in line and "URPO_TRACEBACK=1" in line


def test_traceback_variable_shows_the_error_itself(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    monkeypatch.setenv("URPO_TRACEBACK", "1")
    with pytest.raises(ConfigError, match="bad.yaml"):
        console_main(["fit", "--config", str(bad)])


def test_help_names_urpo_and_every_subcommand_without_echoing_argv():
    out = subprocess.run(
        [sys.executable, "-m", "urpo.cli", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0
    assert out.stdout.startswith("usage: urpo ") and "Lightning Trainer command line tool" not in out.stdout
    for command in ("fit", "validate", "test", "urpo data", "urpo eval-referee", "urpo plot"):
        assert command in out.stdout
    assert "predict" not in out.stdout
    assert "args parameter" not in out.stderr


def test_predict_is_not_a_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        console_main(["predict", "--config", TINY])
    assert stop.value.code == EXIT_BAD_INPUT


def test_validate_without_a_validation_source_is_an_error(tiny_model_dir, tmp_path, capsys, no_model_load):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, line = urpo_fails(
            capsys,
            "validate",
            "--config",
            TINY,
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        )
    assert code == EXIT_BAD_INPUT and "data.val_sources is empty" in line
    assert not [w for w in caught if "args parameter" in str(w.message)]  # the argv echo is gone


def test_urpo_data_batches_without_a_value_is_a_usage_error(capsys):
    code, line = urpo_fails(capsys, "data", "--config", TINY, "--batches")
    assert code == EXIT_BAD_INPUT and "--batches needs a positive whole number" in line


# ---- early checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model.grpo.epsilon_low", "-0.5", "epsilon_low must be in [0, 1)"),
        ("--model.grpo.max_stalled_steps", "0", "max_stalled_steps must be >= 1"),
        ("--data.mixture", "{verifiable: -0.5, preference: 1.0}", "shares must be >= 0"),
    ],
)
def test_settings_out_of_range_are_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, capsys, no_model_load, option, value, message
):
    code, line = urpo_fails(capsys, *fit_args(tiny_model_dir, tmp_path, option, value))
    assert code == EXIT_BAD_INPUT and message in line


def test_a_data_kind_without_reward_fails_before_the_model_loads(tiny_model_dir, tmp_path, capsys, no_model_load):
    sources = f'[{{"adapter": "hh_rlhf", "path": "{SAMPLES}/hh_rlhf_harmless_base_test.jsonl"}}]'
    code, line = urpo_fails(capsys, *fit_args(tiny_model_dir, tmp_path, "--data.sources", sources))
    assert code == EXIT_BAD_INPUT
    assert "['preference'] rows but no reward callback serves them" in line and "math_verifier" in line
    # `urpo data` shows the same problem in its report.
    console_main(
        [
            "data",
            "--config",
            TINY,
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--data.sources",
            sources,
            "--batches",
            "1",
        ]
    )
    assert "rewards: PROBLEM: the data holds ['preference'] rows but no reward" in capsys.readouterr().out


def gsm8k_file(folder: Path, rows: int, bad_line: bool = False) -> Path:
    records = [json.loads(line) for line in (SAMPLES / "gsm8k_train.jsonl").read_text().splitlines()[:rows]]
    lines = [json.dumps(r) for r in records]
    if bad_line:
        lines.insert(1, '{"question": "no answer field"}')
    path = folder / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mixture_shares_not_summing_to_one_are_reported_with_the_real_shares(tmp_path):
    from urpo.data.datamodule import URPODataModule
    from urpo.data.sources import SourceSpec

    spec = SourceSpec(adapter="gsm8k", path=str(gsm8k_file(tmp_path, 4)))
    with pytest.warns(UserWarning, match=r"sums to 1.1, not 1: batches get the shares \{'verifiable': 0.4545"):
        URPODataModule([spec], mixture={"verifiable": 0.5, "preference": 0.6}, batch_size=4)


def test_a_source_smaller_than_a_batch_warns(tmp_path):
    from urpo.data.datamodule import URPODataModule
    from urpo.data.sources import SourceSpec

    datamodule = URPODataModule([SourceSpec(adapter="gsm8k", path=str(gsm8k_file(tmp_path, 1)))], batch_size=4)
    with pytest.warns(UserWarning, match="verifiable sources hold 1 row.*fewer than the 4 verifiable rows"):
        datamodule.setup("fit")


def test_a_checkpoint_data_position_is_refused_when_the_sources_changed(tmp_path):
    from urpo.data.datamodule import URPODataModule
    from urpo.data.sources import SourceSpec

    def datamodule(path: Path) -> URPODataModule:
        return URPODataModule([SourceSpec(adapter="gsm8k", path=str(path))], batch_size=2)

    first = datamodule(gsm8k_file(tmp_path, 4))
    first.setup("fit")
    first.on_before_batch_transfer(next(iter(first.train_dataloader())), 0)  # not training: nothing consumed
    first._consumed_state = first.mixer.state_dict()
    state = first.state_dict()
    datamodule(tmp_path / "small.jsonl").load_state_dict(state)  # the same sources (another folder is fine)
    other = tmp_path / "other.jsonl"
    other.write_text((tmp_path / "small.jsonl").read_text())
    with pytest.raises(ConfigError, match=r"saved for sources \['gsm8k:small.jsonl'\].*now \['gsm8k:other.jsonl'\]"):
        datamodule(other).load_state_dict(state)


def test_identical_preference_responses_with_different_scores_are_refused_or_counted(tmp_path):
    from urpo.data.sources import SourceSpec, load_source

    path = tmp_path / "prefs.jsonl"
    records = [
        {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
        {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Hello there! "},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = SourceSpec(adapter="rewardbench", path=str(path))
    with pytest.raises(DataError, match=r"prefs.jsonl, row 1, field 'responses'.*identical but scored"):
        load_source(spec, "error")
    rows, report = load_source(spec, "skip")
    assert len(rows) == 1 and report.total == 1 and "identical" in report.examples[0]


def test_a_streamed_source_in_skip_mode_counts_its_skips(tmp_path):
    from urpo.data.datamodule import URPODataModule, _BatchStream
    from urpo.data.sources import SourceSpec

    spec = SourceSpec(adapter="gsm8k", path=str(gsm8k_file(tmp_path, 4, bad_line=True)), streaming=True)
    datamodule = URPODataModule([spec], batch_size=2, on_bad_row="skip")
    datamodule.setup("fit")
    batches = iter(_BatchStream(datamodule))
    next(batches)
    assert datamodule.counters["data/skipped_records"] == 1.0  # logged with every step's metrics
    assert "small.jsonl: 1" in datamodule.skips.summary()


def test_eval_referee_reports_why_records_were_skipped_and_counts_them_in_its_csv(tmp_path):
    import csv

    from urpo.referee import PARSE_FAILURE_REASONS
    from urpo.referee_eval import add_skips, format_table, load_rows_and_skips, write_report

    path = tmp_path / "rb.jsonl"
    records = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}", "subset": "easy"} for i in range(2)]
    records.append({"prompt": "broken", "chosen": "", "rejected": "x", "subset": "easy"})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, subsets, skips = load_rows_and_skips(str(path), "rewardbench")
    assert len(rows) == 2 and [(s["index"], s["subset"]) for s in skips] == [(2, "easy")]
    assert "chosen" in skips[0]["reason"]
    stats = {
        "rows": 2,
        "accuracy": 0.5,
        "accuracy_parsed": 0.5,
        "position_consistency": 1.0,
        "consistent_accuracy": 0.5,
        "parse_failure_rate": 0.0,
        "parse_failure_reasons": dict.fromkeys(PARSE_FAILURE_REASONS, 0),
    }
    report = {"subsets": {"easy": dict(stats)}, "overall": dict(stats)}
    add_skips(report, skips)
    assert "skipped 1 records (not scored): record 2 (easy):" in format_table(report)
    write_report(report, str(tmp_path / "r.csv"))
    lines = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(line["subset"], line["skipped"]) for line in lines] == [("easy", "1"), ("OVERALL", "1")]


# ---- checkpoints --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"])
def test_an_unreadable_checkpoint_is_named_before_the_model_loads(
    tiny_model_dir, tmp_path, capsys, no_model_load, content
):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    code, line = urpo_fails(capsys, *fit_args(tiny_model_dir, tmp_path, "--ckpt_path", str(broken)))
    assert code == EXIT_BAD_INPUT
    assert f"checkpoint {broken} is" in line and ("empty" in line or "truncated" in line)


def test_last_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from urpo.checkpoints import newest_readable

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"global_step": 2}, folder / "epoch=0-step=2.ckpt")
    torch.save({"global_step": 4}, folder / "epoch=0-step=4.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "epoch=0-step=4.ckpt").read_bytes()[:100])  # cut short
    later = time.time() + 5
    os.utime(folder / "last.ckpt", (later, later))
    os.utime(folder / "epoch=0-step=2.ckpt", (later - 10, later - 10))
    trainer = SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(dirpath=str(folder))])
    with pytest.warns(UserWarning, match=r"skipped .*last.ckpt \(is truncated.*resuming from .*step=4.ckpt"):
        assert newest_readable(trainer) == str(folder / "epoch=0-step=4.ckpt")
    for path in folder.iterdir():
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        newest_readable(trainer)


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Lightning writes a checkpoint to a temporary file renamed over the target (an fsspec transaction)."""
    from fsspec.implementations.local import LocalFileOpener
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    target = tmp_path / "last.ckpt"
    io = TorchCheckpointIO()
    io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, target)
    original = LocalFileOpener.write

    def dies_halfway(self, data):
        original(self, data[: len(data) // 2])
        raise OSError("killed during the save")

    monkeypatch.setattr(LocalFileOpener, "write", dies_halfway)
    with pytest.raises(OSError, match="killed during the save"):
        io.save_checkpoint({"global_step": 4, "weights": torch.ones(1000)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=False)["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---- non-progress, through the CLI --------------------------------------------------------------------------------


def test_a_run_whose_reward_never_scores_exits_with_one_line(tiny_model_dir, tmp_path, capsys):
    rewards = json.dumps([{"class_path": "tests.fault_rewards.AlwaysNaN", "init_args": {"name": "judge"}}])
    code, line = urpo_fails(
        capsys, *fit_args(tiny_model_dir, tmp_path, "--model.rewards", rewards, "--model.grpo.max_stalled_steps", "2")
    )
    assert code == EXIT_FAILURE
    assert line.startswith("urpo: error: training stalled: 2 batches in a row") and "['judge']" in line
    assert "100% of rewards missing" in line


# ---- preemption ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_step_boundary_and_exits_non_zero(tiny_model_dir, tmp_path):
    from tests.test_cli import run_fit

    command = [sys.executable, "-m", "urpo.cli", *fit_args(tiny_model_dir, tmp_path, "--trainer.max_steps", "1000")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (checkpoints / "epoch=0-step=2.ckpt").exists():
        time.sleep(0.2)
    time.sleep(0.5)  # into step 3: the next boundary is after it
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 143, out[-2000:]
    saved = torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"]
    assert saved >= 3  # the work after the periodic step-2 checkpoint was kept
    assert f"received SIGTERM; saved a checkpoint at step {saved}" in out and "--ckpt_path last" in out
    # SIGTERM stopped at a step boundary: `--ckpt_path last` continues from exactly there.
    run_fit(tiny_model_dir, tmp_path, "--ckpt_path", "last", "--trainer.max_steps", str(saved + 1))
    rows = (tmp_path / "tiny" / "version_1" / "metrics.csv").read_text().splitlines()
    steps = {int(line.split(",")[rows[0].split(",").index("step")]) for line in rows[1:]}
    assert steps == {saved}


@pytest.mark.slow
def test_ckpt_path_last_skips_a_cut_short_last_checkpoint(tiny_model_dir, tmp_path):
    from tests.test_cli import run_fit

    run_fit(tiny_model_dir, tmp_path, "--trainer.max_steps", "2")
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # as a full disk or an interrupted copy leaves it
    with pytest.warns(UserWarning, match=r"skipped .*last.ckpt \(is truncated.*resuming from .*epoch=0-step=2.ckpt"):
        run_fit(tiny_model_dir, tmp_path, "--ckpt_path", "last", "--trainer.max_steps", "3")
    rows = (tmp_path / "tiny" / "version_1" / "metrics.csv").read_text().splitlines()
    steps = {int(line.split(",")[rows[0].split(",").index("step")]) for line in rows[1:]}
    assert steps == {2}
