"""The ``urpo`` command: Lightning's CLI over :class:`URPOModule` and :class:`URPODataModule`.

``urpo fit --config configs/demo.yaml`` trains; ``urpo validate`` / ``urpo test`` evaluate; ``--print_config`` shows
every option with its resolved value. All options are the typed signatures of the module, the DataModule and
Lightning's Trainer, so YAML is validated before anything is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from urpo.data.datamodule import URPODataModule
from urpo.module import URPOModule


class URPOCLI(LightningCLI):
    """LightningCLI that reports where a run's metrics, checkpoints and exported model landed."""

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.global_rank != 0:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        ckpt = trainer.checkpoint_callback
        lines = [
            f"metrics:     {log_dir / 'metrics.csv'}",
            f"samples:     {log_dir / 'samples.jsonl'}",
            f"checkpoints: {ckpt.dirpath if ckpt is not None else 'off'}",
        ]
        export_dir = self.model.logging_args.export_dir
        if export_dir is not None:
            lines.append(f"model:       {log_dir / 'hf_model' if export_dir == 'auto' else export_dir}")
        print("urpo: run finished\n  " + "\n  ".join(lines))


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``urpo`` console script."""
    URPOCLI(
        URPOModule,
        URPODataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
