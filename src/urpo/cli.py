"""The ``urpo`` command: Lightning's CLI over :class:`URPOModule` and :class:`URPODataModule`.

``urpo fit --config configs/demo.yaml`` trains; ``urpo validate`` / ``urpo test`` evaluate; ``--print_config`` shows
every option with its resolved value. All options are the typed signatures of the module, the DataModule and
Lightning's Trainer, so YAML is validated before anything is loaded.

Errors urpo knows (bad config, bad data, unreadable checkpoints, malformed YAML, a stalled run) end the command with
one line on stderr naming the file, row or field and what to do; ``URPO_TRACEBACK=1`` shows the traceback instead.
Exit codes: 0 success, 1 failure, 2 bad config or data (as argparse), 143 stopped by SIGTERM (checkpoint saved).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from urpo.checkpoints import checked_checkpoint, newest_readable
from urpo.config_files import check_config_files
from urpo.data.datamodule import URPODataModule
from urpo.errors import ConfigError, DataError, URPOError
from urpo.launch_env import with_env_options
from urpo.module import URPOModule
from urpo.plots import CurvesCallback
from urpo.preemption import PreemptionCheckpoint
from urpo.strategies import release_process_group

EXIT_FAILURE = 1
"""Exit status of a run that failed (a stalled run, a broken reward callback, any unexpected error)."""
EXIT_BAD_INPUT = 2
"""Exit status of a command refused for its input: config, data or checkpoint (argparse uses 2 too)."""
TRACEBACK_VARIABLE = "URPO_TRACEBACK"
"""Set to 1 to see the full traceback of an error instead of its one-line summary."""

# Subcommands that are not Lightning stages: name -> ("module:function" taking the remaining argv, help line).
EXTRA_COMMANDS = {
    "data": ("urpo.inspect_data:main", "inspect a config's data mixture and rendered prompts (no model weights)"),
    "eval-referee": ("urpo.referee_eval:main", "measure a model as a referee on a preference set"),
    "plan": ("urpo.plan.report:main", "memory per GPU and step time of a fit config, before launch (no weights)"),
    "plot": ("urpo.plots:main", "redraw a run's curves.png from its metrics.csv"),
}
DESCRIPTION = "urpo: train one language model as policy and reward model in one GRPO loop (URPO)."


class URPOCLI(LightningCLI):
    """LightningCLI that draws a run's curves and reports where its metrics, checkpoints and exported model landed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        epilog = "More subcommands: " + "; ".join(f"urpo {name}: {text}" for name, (_, text) in EXTRA_COMMANDS.items())
        # default_env: PL_FIT__TRAINER__NUM_NODES and the like (urpo.launch_env), on every subcommand's parser.
        env = {name: {"default_env": True} for name in self.subcommands()}
        kwargs.setdefault(
            "parser_kwargs", {"prog": "urpo", "description": DESCRIPTION, "epilog": epilog, "default_env": True, **env}
        )
        if isinstance(kwargs.get("args"), list):
            check_config_files(kwargs["args"])  # malformed YAML or a renamed key: one line, before any parsing
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `predict` is left out: a URPO module has no prediction step (sampling is `urpo eval-referee` or the
        # exported model's generate).
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        # The config's `curves` section: on in every run, off with `curves: {enabled: false}` (a callback in
        # trainer_defaults could not be turned off from YAML).
        parser.add_lightning_class_args(CurvesCallback, "curves")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error, URPOError):
                raise
            # The argument groups (urpo.args) raise ConfigError themselves; a ValueError raised while the config is
            # turned into objects (a class given by class_path, Lightning's own checks) is a bad config too.
            raise ConfigError(f"config: {error}") from error

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(PreemptionCheckpoint())  # SIGTERM saves a checkpoint and exits 143
        return trainer

    def _parse_ckpt_path(self) -> None:
        # Lightning reads a checkpoint given by path right after parsing: refuse an unreadable one first, by name.
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).is_file():
            checked_checkpoint(ckpt_path)
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":  # the newest readable checkpoint, skipping cut-short ones
            arguments["ckpt_path"] = newest_readable(self.trainer) or "last"
        elif arguments.get("ckpt_path") not in (None, "best", "hpc"):
            checked_checkpoint(arguments["ckpt_path"])

    def before_validate(self) -> None:
        if not self.datamodule.val_sources:
            raise ConfigError("urpo validate: data.val_sources is empty; add a held-out source to validate on")

    def before_test(self) -> None:
        if not self.datamodule.test_sources:
            raise ConfigError("urpo test: data.test_sources is empty; add a source to test on")

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


def _quiet_known_warnings() -> None:
    """Hide Lightning hints that do not apply to urpo's design, so real warnings stand out."""
    for message in (
        ".*ModelCheckpoint with manual optimization.*",  # urpo checkpoints after its optimizer steps on purpose
        ".*Total length of `list` across ranks is zero.*",  # no validation sources configured
        ".*overridden `transfer_batch_to_device`.*",  # batches are rows of text; nothing to move
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # inside Lightning itself
        ".*LightningCLI's args parameter is intended.*",  # `urpo` passes its own argv on purpose (echoed it whole)
    ):
        warnings.filterwarnings("ignore", message=message)


def main(args: list[str] | None = None) -> None:
    """Run one ``urpo`` command (``args`` as on the command line; default ``sys.argv[1:]``); errors propagate.

    The console script is :func:`console_main`, which reports urpo's own errors in one line.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        module_name, function = EXTRA_COMMANDS[argv[0]][0].split(":")
        getattr(importlib.import_module(module_name), function)(argv[1:])
        return
    argv = with_env_options(argv)  # PL_FIT__TRAINER__NUM_NODES=2 etc. override the YAML (urpo.launch_env)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help lines
    _quiet_known_warnings()
    try:
        saving = {"overwrite": True}
        URPOCLI(URPOModule, URPODataModule, seed_everything_default=0, save_config_kwargs=saving, args=argv)
    finally:  # every rank runs this: a group left for interpreter shutdown can abort a finished run
        release_process_group()


def exit_code(error: BaseException) -> int | None:
    """The exit status for an error urpo reports in one line; None for errors shown with their traceback."""
    if isinstance(error, (ConfigError, DataError)):
        return EXIT_BAD_INPUT
    if isinstance(error, URPOError):
        return EXIT_FAILURE
    return None


def console_main(args: list[str] | None = None) -> None:
    """Entry point of the ``urpo`` console script: :func:`main`, with urpo's own errors as one line on stderr and
    exit status 2 (bad config or data) or 1 (failure); ``URPO_TRACEBACK=1`` re-raises them with their traceback."""
    try:
        main(args)
    except Exception as error:
        code = exit_code(error)
        if code is None or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split())  # one line, whatever the error's own layout
        print(f"urpo: error: {message} (set {TRACEBACK_VARIABLE}=1 for the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(code) from None


if __name__ == "__main__":
    console_main(sys.argv[1:])
