"""The run's curves picture: panels from metrics.csv, `urpo plot RUN_DIR`, the callback in fit, bad input."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from urpo import plots
from urpo.cli import main
from urpo.errors import DataError
from urpo.plots import PANELS, CurvesCallback, draw_curves, read_metrics

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]

EVERY_METRIC = [
    "reward/verifiable_mean",
    "reward/verifiable_std",
    "reward/preference_mean",
    "reward/preference_std",
    "reward/open_mean",
    "reward/open_std",
    "reward/math_verifier/accuracy",
    "reward/preference_reward/referee_accuracy",
    "reward/preference_reward/agreement",
    "reward/preference_reward/parse_failure_rate",
    "reward/self_judge/parse_failure_rate",
    "groups/zero_variance_frac",
    "groups/preference_zero_variance_frac",
    "train/entropy",
    "train/kl",
    "completion/length_mean",
    "completion/length_max",
    "completion/max_new_tokens",
    "completion/truncated_frac",
    "train/loss",
]


def write_metrics(path: Path, columns: list[str], steps: int = 6, blank: tuple[str, ...] = ()) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it: epoch, step, one row per step, plus a sparse val row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", *columns])
        writer.writeheader()
        for step in range(steps):
            values = {c: ("nan" if c in blank else f"{(step + i) % 7 / 7:.3f}") for i, c in enumerate(columns)}
            writer.writerow({"epoch": 0, "step": step, **values})
        writer.writerow({"epoch": 0, "step": steps - 1})  # a row of other metrics: every cell here is empty
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_panel_is_drawn_when_every_metric_is_logged(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.csv", EVERY_METRIC)
    drawn = draw_curves(metrics)
    assert drawn == [p.title for p in PANELS if p.title != "held-out reward per kind"]
    width, height = png_size(tmp_path / "curves.png")
    assert 1000 <= width <= 2500 and 700 <= height <= 2000


def test_panels_whose_metrics_are_missing_or_all_nan_are_left_out(tmp_path):
    columns = ["reward/verifiable_mean", "train/kl", "completion/length_mean"]
    metrics = write_metrics(tmp_path / "run" / "metrics.csv", columns, blank=("train/kl",))
    drawn = draw_curves(metrics, tmp_path / "out" / "two.png", title="two panels")
    assert drawn == ["reward per kind (mean ± std)", "completion length"]
    full = draw_curves(write_metrics(tmp_path / "full" / "metrics.csv", EVERY_METRIC))
    assert png_size(tmp_path / "out" / "two.png")[1] < png_size(tmp_path / "full" / "curves.png")[1] / 2  # 1 row, not 3
    assert len(full) == 8


@pytest.mark.parametrize(
    ("metric", "panel"),
    [
        ("reward/open_mean", "reward per kind (mean ± std)"),
        ("val/reward/open_mean", "held-out reward per kind"),
        ("reward/self_judge/cross_check/pairwise_agreement", "accuracy and agreement"),
        ("reward/preference_reward/position_consistency", "accuracy and agreement"),
        ("reward/preference_reward/second_parse_failure_rate", "referee parse failures"),
        ("groups/open_zero_variance_frac", "zero-variance groups (zero advantage)"),
        ("train/loss", None),
        ("reward/mean", None),
        ("val/reward/math_verifier/accuracy", None),
    ],
)
def test_each_metric_lands_in_its_panel(metric, panel):
    assert [p.title for p in PANELS if p.lines([metric])] == ([panel] if panel else [])


def test_read_metrics_skips_empty_cells_and_names_a_bad_cell(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/entropy,train/kl\n0,0,1.5,\n0,1,,0.25\n0,2,nan,0.5\n")
    assert read_metrics(path) == {"train/entropy": ([0.0], [1.5]), "train/kl": ([1.0, 2.0], [0.25, 0.5])}
    path.write_text("epoch,step,train/entropy\n0,0,1.5\n0,1,high\n")
    with pytest.raises(DataError, match=r"metrics.csv, field 'train/entropy': line 3: 'high' is not a number"):
        read_metrics(path)


def test_urpo_plot_picks_the_newest_version_and_honours_output(tmp_path, capsys):
    write_metrics(tmp_path / "demo" / "version_2" / "metrics.csv", ["train/entropy"])
    write_metrics(tmp_path / "demo" / "version_10" / "metrics.csv", ["train/entropy", "completion/truncated_frac"])
    (tmp_path / "demo" / "checkpoints").mkdir()
    main(["plot", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert f"using {tmp_path / 'demo' / 'version_10'}, the newest of 2 runs" in out
    assert (tmp_path / "demo" / "version_10" / "curves.png").is_file()
    assert not (tmp_path / "demo" / "version_2" / "curves.png").exists()
    assert "2 panels: policy entropy, truncated completions" in out
    main(["plot", str(tmp_path / "demo" / "version_2"), "--output", str(tmp_path / "pictures" / "v2.svg")])
    assert "<svg" in (tmp_path / "pictures" / "v2.svg").read_text()[:500]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", r"run folder .*missing does not exist"),
        (lambda d: d, r"holds no metrics.csv, neither itself nor in version_N folders; runs are in .* demo: pass"),
        (lambda d: write_metrics(d / "metrics.csv", ["loss", "acc"]), r"none of the columns urpo plots"),
        (lambda d: (d / "metrics.csv").write_text("loss,acc\n1,2\n") and d, r"no 'step' column"),
    ],
)
def test_urpo_plot_rejects_bad_input_in_one_line(tmp_path, make, message):
    write_metrics(tmp_path / "demo" / "version_0" / "metrics.csv", ["train/entropy"])  # a run deeper down
    with pytest.raises(SystemExit, match=f"^urpo plot: error: .*{message}"):
        main(["plot", str(make(tmp_path))])


def test_urpo_plot_rejects_an_output_it_cannot_draw(tmp_path):
    write_metrics(tmp_path / "metrics.csv", ["train/entropy"])
    with pytest.raises(SystemExit, match=r"curves\.txt: cannot draw a \.txt file"):
        main(["plot", str(tmp_path), "--output", str(tmp_path / "curves.txt")])


def test_urpo_plot_error_is_one_line_on_stderr(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "urpo.cli", "plot", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"urpo plot: error: run folder {tmp_path / 'nowhere'} does not exist"]


def test_a_tiny_urpo_fit_leaves_its_curves_next_to_metrics(tiny_model_dir, tmp_path, capsys):
    from tests.test_cli import run_fit

    run_fit(tiny_model_dir, tmp_path, "--trainer.max_steps", "2")
    run = tmp_path / "tiny" / "version_0"
    width, height = png_size(run / "curves.png")
    assert 800 <= width <= 2500 and 300 <= height <= 2000
    assert f"curves:      {run / 'curves.png'}" in capsys.readouterr().out
    drawn = draw_curves(run / "metrics.csv", tmp_path / "again.png")  # the names urpo logs match the panels
    assert {
        "reward per kind (mean ± std)",
        "accuracy and agreement",
        "zero-variance groups (zero advantage)",
        "completion length",
        "truncated completions",
    } <= set(drawn)
    assert "referee parse failures" not in drawn  # tiny.yaml has no referee


def test_curves_can_be_turned_off_in_the_config(tiny_model_dir, tmp_path, capsys):
    from tests.test_cli import run_fit

    run_fit(tiny_model_dir, tmp_path, "--trainer.max_steps", "1", "--curves.enabled", "false")
    assert not (tmp_path / "tiny" / "version_0" / "curves.png").exists()
    assert "curves:      off" in capsys.readouterr().out


def test_a_picture_name_it_cannot_draw_fails_at_config_time(tiny_model_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "urpo.cli",
            "fit",
            "--config",
            str(ROOT / "tests/configs/tiny.yaml"),
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--curves.filename",
            "curves.txt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "curves.filename must end with .png, .svg, .pdf, got 'curves.txt'" in out.stderr


class LoggingModel(BoringModel):
    """Logs urpo-named metrics; raises at step ``fail_at``."""

    def __init__(self, names: tuple[str, ...] = ("train/entropy", "completion/length_mean"), fail_at=None):
        super().__init__()
        self.names, self.fail_at = names, fail_at

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        self.log_dict({name: float(batch_idx + i) for i, name in enumerate(self.names)})
        return super().training_step(batch, batch_idx)


def fit(tmp_path: Path, model: BoringModel, callback: CurvesCallback, logger=True) -> L.Trainer:
    logger = CSVLogger(tmp_path, name="run") if logger else False  # flushes every 100 steps: the callback must save
    trainer = L.Trainer(
        max_steps=4,
        logger=logger,
        callbacks=[callback],
        log_every_n_steps=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return trainer


def test_the_callback_draws_when_fit_fails(tmp_path):
    callback = CurvesCallback()
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, LoggingModel(fail_at=3), callback)
    picture = tmp_path / "run" / "version_0" / "curves.png"
    assert callback.paths == [picture] and png_size(picture)[0] > 0
    assert read_metrics(picture.parent / "metrics.csv")["train/entropy"][1] == [0.0, 1.0, 2.0]


def test_the_callback_does_nothing_without_a_csv_logger(tmp_path):
    callback = CurvesCallback()
    fit(tmp_path, LoggingModel(), callback, logger=False)
    assert callback.paths == [] and "CSV logger" in callback.note
    assert not list(tmp_path.rglob("*.png"))


def test_a_drawing_error_is_a_warning_not_a_failed_run(tmp_path):
    callback = CurvesCallback()
    with pytest.warns(UserWarning, match=r"could not draw the curves of .*DataError: .*none of the columns"):
        trainer = fit(tmp_path, LoggingModel(names=("loss_of_my_own",)), callback)
    assert trainer.global_step == 4 and callback.paths == []


def test_without_matplotlib_the_callback_warns_once(tmp_path, monkeypatch):
    def missing():
        raise ImportError("drawing curves needs matplotlib: pip install 'urpo[plots]'")

    monkeypatch.setattr(plots, "_matplotlib", missing)
    callback = CurvesCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, LoggingModel(), callback)
        callback.draw(trainer)
    assert [str(w.message) for w in caught if "matplotlib" in str(w.message)] == [
        "urpo: no curves picture: drawing curves needs matplotlib: pip install 'urpo[plots]'"
    ]
    assert callback.paths == [] and "matplotlib" in callback.note
