"""The ``urpo`` command: Lightning's CLI over :class:`URPOModule` and :class:`URPODataModule`.

``urpo fit --config configs/demo.yaml`` trains; ``urpo validate`` / ``urpo test`` evaluate; ``--print_config`` shows
every option with its resolved value. All options are the typed signatures of the module, the DataModule and
Lightning's Trainer, so YAML is validated before anything is loaded.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from urpo.data.datamodule import URPODataModule
from urpo.launch_env import with_env_options
from urpo.module import URPOModule
from urpo.plots import CurvesCallback


class URPOCLI(LightningCLI):
    """LightningCLI that draws a run's curves and reports where its metrics, checkpoints and exported model landed."""

    def add_arguments_to_parser(self, parser) -> None:
        # The config's `curves` section: on in every run, off with `curves: {enabled: false}` (a callback in
        # trainer_defaults could not be turned off from YAML).
        parser.add_lightning_class_args(CurvesCallback, "curves")

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast: every rank must ask
        if trainer.global_rank != 0:
            return
        ckpt = trainer.checkpoint_callback
        lines = [
            f"metrics:     {log_dir / 'metrics.csv'}",
            f"curves:      {next((c.note for c in trainer.callbacks if isinstance(c, CurvesCallback)), 'off')}",
            f"samples:     {log_dir / 'samples.jsonl'}",
            f"checkpoints: {ckpt.dirpath if ckpt is not None else 'off'}",
        ]
        export_dir = self.model.logging_args.export_dir
        if export_dir is not None:
            lines.append(f"model:       {log_dir / 'hf_model' if export_dir == 'auto' else export_dir}")
        print("urpo: run finished\n  " + "\n  ".join(lines))


# Subcommands that are not Lightning stages: name -> "module:function" taking the remaining argv.
EXTRA_COMMANDS = {
    "data": "urpo.data.inspect:main",
    "eval-referee": "urpo.referee_eval:main",
    "plan": "urpo.plan.report:main",
    "plot": "urpo.plots:main",
}


def _quiet_known_warnings() -> None:
    """Hide Lightning hints that do not apply to urpo's design, so real warnings stand out."""
    for message in (
        ".*ModelCheckpoint with manual optimization.*",  # urpo checkpoints after its optimizer steps on purpose
        ".*Total length of `list` across ranks is zero.*",  # no validation sources configured
        ".*overridden `transfer_batch_to_device`.*",  # batches are rows of text; nothing to move
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # inside Lightning itself
    ):
        warnings.filterwarnings("ignore", message=message)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``urpo`` console script: Lightning's fit/validate/test, plus ``data`` and ``eval-referee``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        module_name, function = EXTRA_COMMANDS[argv[0]].split(":")
        getattr(importlib.import_module(module_name), function)(argv[1:])
        return
    argv = with_env_options(argv)  # PL_FIT__TRAINER__NUM_NODES=2 etc. override the YAML (urpo.launch_env)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help lines
    _quiet_known_warnings()
    URPOCLI(
        URPOModule,
        URPODataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": True},
        args=argv,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
