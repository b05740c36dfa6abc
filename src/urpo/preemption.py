"""Preemption: a SIGTERM (how SLURM and Kubernetes stop a job) saves a checkpoint at the step boundary and fails.

Lightning notes a SIGTERM in ``trainer.received_sigterm`` and, once the current training batch has finished (its
optimizer step, logging and periodic checkpoint included), raises ``SIGTERMException``, a ``SystemExit`` whose code
is 0 by default: a scheduler would see success, and the work since the last periodic checkpoint would be lost.
:class:`PreemptionCheckpoint` saves a checkpoint at that boundary (``last.ckpt`` of the run's ``ModelCheckpoint``, so
``--ckpt_path last`` resumes from it) and turns the exit into 143 (128 + SIGTERM, the shell's code for a process
ended by SIGTERM). SIGINT (Ctrl+C) is left to Lightning: it stops without a checkpoint and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT_CODE = 143
"""Exit status of a run stopped by SIGTERM: 128 + 15, as a shell reports a process ended by that signal."""


class PreemptionCheckpoint(Callback):
    """On SIGTERM during ``fit``: save a resumable checkpoint at the step boundary, then exit with code 143.

    The checkpoint is ``last.ckpt`` in the folder of the trainer's ``ModelCheckpoint`` (``<default_root_dir>/
    preempted.ckpt`` without one). ``saved`` holds its path once written.
    """

    def __init__(self) -> None:
        self.saved: Path | None = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        target = self._target(trainer)
        trainer.save_checkpoint(target)  # collective under DDP/FSDP: every rank got the same SIGTERMException
        self.saved = target
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last:
            checkpoint.last_model_path = str(target)
        exception.code = SIGTERM_EXIT_CODE  # a preempted run did not succeed: let the scheduler requeue it
        if trainer.is_global_zero:
            print(
                f"urpo: received SIGTERM; saved a checkpoint at step {trainer.global_step} to {target}; "
                "resume with --ckpt_path last",
                flush=True,
            )

    @staticmethod
    def _target(trainer: Any) -> Path:
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath is not None:
            return Path(checkpoint.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "preempted.ckpt"


__all__ = ["SIGTERM_EXIT_CODE", "PreemptionCheckpoint"]
