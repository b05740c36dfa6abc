"""A run's curves as one PNG: drawn from ``metrics.csv`` when ``urpo fit`` ends, redrawn by ``urpo plot RUN_DIR``.

Each panel shows the metrics whose names match its pattern (reward per kind with its spread, accuracy and
agreement, referee parse failures, zero-variance groups, entropy, KL, completion lengths, truncation); a panel whose
metrics a run did not log is left out. matplotlib (the ``plots`` extra) is imported only when a picture is drawn,
and only its Agg canvas is used, so drawing never changes the backend of a notebook or another plotting caller.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.loggers import CSVLogger
from lightning.pytorch.callbacks import Callback

from urpo.data.schema import ROW_KINDS
from urpo.errors import ConfigError, DataError, URPOError

CURVES_FILE = "curves.png"
CALLBACK_FORMATS = (".png", ".svg", ".pdf")
Series = dict[str, tuple[list[float], list[float]]]  # metric -> (steps, values)


@dataclass(frozen=True)
class Panel:
    """One subplot: every metric whose name matches ``pattern``, one line each, named by its ``label`` group."""

    title: str
    pattern: str
    ylabel: str
    share: bool = False  # a 0-1 quantity: the y axis spans [0, 1] so panels and runs compare at a glance
    band: bool = False  # shade mean ± the metric of the same name ending in ``_std``
    dashed: tuple[str, ...] = ()  # labels drawn dashed: limits rather than measurements

    def lines(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """The (metric, label) pairs of this panel among ``names``, in the order given."""
        found = [(name, re.match(self.pattern, name)) for name in names]
        return [(name, match.group("label")) for name, match in found if match]


_KINDS = "|".join(ROW_KINDS)
PANELS: tuple[Panel, ...] = (
    Panel("reward per kind (mean ± std)", rf"^reward/(?P<label>{_KINDS})_mean$", "reward", band=True),
    Panel("held-out reward per kind", rf"^val/reward/(?P<label>{_KINDS})_mean$", "reward"),
    Panel("accuracy and agreement", r"^reward/(?P<label>.+(?:accuracy|agreement|consistency))$", "share", share=True),
    Panel("referee parse failures", r"^reward/(?P<label>.+parse_failure_rate)$", "share of outputs", share=True),
    Panel(
        "zero-variance groups (zero advantage)",
        r"^groups/(?P<label>.*zero_variance_frac)$",
        "share of groups",
        share=True,
    ),
    Panel("policy entropy", r"^train/(?P<label>entropy)$", "nats per token"),
    Panel("KL to the reference", r"^train/(?P<label>kl)$", "KL estimate"),
    Panel(
        "completion length",
        r"^completion/(?P<label>length_mean|length_max|max_new_tokens)$",
        "tokens",
        dashed=("max_new_tokens",),
    ),
    Panel("truncated completions", r"^completion/(?P<label>truncated_frac)$", "share of completions", share=True),
)


def read_metrics(path: str | Path) -> Series:
    """Every metric of a Lightning ``metrics.csv`` as (steps, values), leaving out empty cells and non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise DataError("no 'step' column: not a metrics.csv written by Lightning's CSVLogger", source=str(path))
        series: Series = {name: ([], []) for name in reader.fieldnames if name not in ("step", "epoch")}
        for line, record in enumerate(reader, start=2):
            step = _number(record.get("step"), path, line, "step")
            if step is None:
                continue
            for name, (steps, values) in series.items():
                value = _number(record.get(name), path, line, name)
                if value is not None and math.isfinite(value):
                    steps.append(step)
                    values.append(value)
    return {name: points for name, points in series.items() if points[0]}


def _number(text: str | None, path: Path, line: int, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise DataError(f"line {line}: {text!r} is not a number", source=str(path), field=name) from None


def draw_curves(metrics: str | Path, output: str | Path | None = None, title: str | None = None) -> list[str]:
    """Draws the panels whose metrics ``metrics`` (a ``metrics.csv``) holds into ``output`` (default: ``curves.png``
    next to it; the suffix picks the format). Returns the titles of the panels drawn, in order."""
    metrics = Path(metrics)
    output = metrics.parent / CURVES_FILE if output is None else Path(output)
    figure_class, canvas_class = _matplotlib()
    series = read_metrics(metrics)
    chosen = [(panel, lines) for panel in PANELS if (lines := panel.lines(list(series)))]
    if not chosen:
        wanted = "reward/<kind>_mean, groups/zero_variance_frac, train/entropy, completion/length_mean"
        raise DataError(
            f"none of the columns urpo plots ({wanted}, ...): is this the metrics of a urpo run?", source=str(metrics)
        )
    columns = min(3, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    figure = figure_class(figsize=(4.8 * columns, 3.2 * rows + 0.4), layout="constrained")
    canvas = canvas_class(figure)
    suffix = output.suffix.lstrip(".").lower()
    if suffix not in canvas.get_supported_filetypes():
        raise ConfigError(f"{output}: cannot draw a {output.suffix or 'suffix-less'} file; use .png (or .svg, .pdf)")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (panel, lines) in zip(axes, chosen):
        _draw_panel(ax, panel, lines, series)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    figure.suptitle(title or str(metrics.parent), fontsize=10)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    return [panel.title for panel, _ in chosen]


def _draw_panel(ax: Any, panel: Panel, lines: list[tuple[str, str]], series: Series) -> None:
    from matplotlib.ticker import MaxNLocator

    for name, label in lines:
        steps, values = series[name]
        dashed = label in panel.dashed
        marker = "o" if len(steps) <= 30 and not dashed else None  # a short run: show every logged point
        (line,) = ax.plot(
            steps, values, label=label, marker=marker, markersize=3, linewidth=1.4, linestyle="--" if dashed else "-"
        )
        spread = series.get(name[: -len("_mean")] + "_std") if panel.band and name.endswith("_mean") else None
        if spread is not None:
            std = dict(zip(*spread))
            shared = [(s, v, std[s]) for s, v in zip(steps, values) if s in std]
            ax.fill_between(
                [s for s, _, _ in shared],
                [v - d for _, v, d in shared],
                [v + d for _, v, d in shared],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, even in a 2-step run
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if panel.share:
        ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)


def _matplotlib() -> tuple[type, type]:
    """matplotlib's Figure and Agg canvas, imported on first use: it is an optional extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"drawing curves needs matplotlib: pip install 'urpo[plots]' ({err})") from err
    return Figure, FigureCanvasAgg


class CurvesCallback(Callback):
    """Draws ``curves.png`` next to each CSV logger's ``metrics.csv`` when fit ends, fails or is interrupted.

    ``urpo fit`` adds it to every run as the ``curves`` section of the config (``--curves.enabled false`` or
    ``curves: {enabled: false}`` turns it off). It draws on rank 0 only, does nothing without a CSV logger, and never
    fails a run: a drawing error becomes a warning (``urpo plot RUN_DIR`` redraws the picture later).

    Args:
        enabled: draw at all.
        filename: the picture's file name, next to ``metrics.csv``; its suffix (.png, .svg or .pdf) picks the format.
    """

    def __init__(self, enabled: bool = True, filename: str = CURVES_FILE) -> None:
        if Path(filename).suffix.lower() not in CALLBACK_FORMATS:  # fail at config time, not after the training
            raise ConfigError(f"curves.filename must end with {', '.join(CALLBACK_FORMATS)}, got {filename!r}")
        self.enabled, self.filename = enabled, filename
        self.paths: list[Path] = []  # the pictures written by the last draw
        self.note = "off" if not enabled else "not drawn yet"
        self._warned_missing = False

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.draw(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if trainer.global_step > 0:  # something was logged; a run that failed in setup has nothing to draw
            self.draw(trainer)

    def draw(self, trainer: Any) -> list[Path]:
        """Draws one picture per CSV logger of ``trainer`` and returns their paths (none on other ranks)."""
        if not self.enabled or not trainer.is_global_zero:
            return []
        loggers = [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        if not loggers:
            self.note = "not drawn (needs a CSV logger)"
            return []
        self.paths, self.note = [], "not drawn (no metrics.csv yet)"
        for logger in loggers:
            try:
                logger.save()  # flush metrics still buffered (flush_logs_every_n_steps)
                metrics = Path(logger.experiment.metrics_file_path)
                if not metrics.is_file():  # nothing logged yet, or a remote save_dir
                    continue
                draw_curves(metrics, metrics.parent / self.filename)
                self.paths.append(metrics.parent / self.filename)
            except ImportError as err:
                self.note = "not drawn (matplotlib is not installed)"
                if not self._warned_missing:
                    warnings.warn(f"urpo: no curves picture: {err}", stacklevel=2)
                    self._warned_missing = True
                return []
            except Exception as err:  # noqa: BLE001 - a picture must never fail a training run
                self.note = "not drawn (see the warning)"
                warnings.warn(
                    f"urpo: could not draw the curves of {logger.log_dir}: {type(err).__name__}: {err}"
                    f" (`urpo plot {logger.log_dir}` redraws them)",
                    stacklevel=2,
                )
        if self.paths:
            self.note = ", ".join(str(p) for p in self.paths)
        return self.paths


def find_metrics(run_dir: str | Path) -> tuple[Path, str | None]:
    """The ``metrics.csv`` of a run folder, a ``metrics.csv`` path itself, or that of the newest ``version_N`` folder
    under ``run_dir``; with a note naming the version picked (None when there was no choice)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir, None
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    if (run_dir / "metrics.csv").is_file():
        return run_dir / "metrics.csv", None
    versions = sorted(
        (int(match.group(1)), folder)
        for folder in run_dir.iterdir()
        if (match := re.fullmatch(r"version_(\d+)", folder.name)) and (folder / "metrics.csv").is_file()
    )
    if versions:
        newest = versions[-1][1]
        choice = f", the newest of {len(versions)} runs" if len(versions) > 1 else ""
        return newest / "metrics.csv", f"{newest}{choice}"
    nested = sorted({p.parent.parent.name for p in run_dir.glob("*/version_*/metrics.csv")})
    hint = f"; runs are in its subfolders {', '.join(nested)}: pass one of them" if nested else ""
    raise ConfigError(f"{run_dir} holds no metrics.csv, neither itself nor in version_N folders{hint}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urpo plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (holding metrics.csv), or a parent of version_N folders")
    parser.add_argument("--output", default=None, help=f"the picture to write (default: {CURVES_FILE} by metrics.csv)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Entry point of ``urpo plot RUN_DIR [--output FILE]``: redraws a run's curves; returns the picture's path."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics, note = find_metrics(args.run_dir)
        if note is not None:
            print(f"urpo plot: using {note}")
        output = metrics.parent / CURVES_FILE if args.output is None else Path(args.output)
        panels = draw_curves(metrics, output)
    except (URPOError, ImportError) as err:
        raise SystemExit(f"urpo plot: error: {err}") from None
    print(f"curves: {output} ({len(panels)} panels: {', '.join(panels)})")
    return output
