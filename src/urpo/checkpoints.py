"""Checkpoint files before they are loaded: a clear error for an unreadable one, and ``last`` that skips them.

Lightning writes single-file checkpoints through an fsspec transaction (a temporary file renamed over the target),
so a kill during a save leaves the previous file whole. A checkpoint can still be cut short (a full disk, a copy
interrupted, a file system without atomic rename); ``torch.load`` then fails with a bare ``EOFError`` or ``OSError``
after the model has loaded. The checks here run first and cost one read of the zip directory at the file's end.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from urpo.errors import ConfigError


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be a checkpoint torch can load (None: it looks whole).

    ``torch.save`` writes a zip archive whose directory is at the end, so a truncated or empty file fails here.
    A folder is a distributed (DCP) checkpoint: it must hold the ``.metadata`` file written last.
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return None if (path / ".metadata").is_file() else "is a folder without .metadata (an unfinished DCP save)"
    if path.stat().st_size == 0:
        return "is empty"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"is truncated or not a torch checkpoint ({error})"
    return None


def checked_checkpoint(path: str | Path) -> str:
    """``path`` if it is readable, else a :class:`ConfigError` naming it and what to do."""
    reason = unreadable_reason(path)
    if reason is not None:
        raise ConfigError(f"checkpoint {path} {reason}; pass another --ckpt_path (or 'last' for the newest readable)")
    return str(path)


def newest_readable(trainer: Any) -> str | None:
    """The checkpoint ``--ckpt_path last`` should resume: the newest ``last*.ckpt`` of the trainer's
    ``ModelCheckpoint`` folders that is readable, else the newest readable checkpoint there, with a warning naming
    the unreadable ones skipped. None when there is no checkpoint at all (Lightning then starts from scratch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    folders = {Path(cb.dirpath) for cb in callbacks}
    found = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.suffix == ".ckpt"]
    if not found:
        return None
    lasts = [p for p in found if p.stem == "last" or p.stem.startswith("last-v")]
    ordered = sorted(lasts, key=_mtime, reverse=True) + sorted(set(found) - set(lasts), key=_mtime, reverse=True)
    skipped = []
    for path in ordered:
        reason = unreadable_reason(path)
        if reason is None:
            if skipped:
                warnings.warn(f"--ckpt_path last: skipped {'; '.join(skipped)}; resuming from {path}", stacklevel=2)
            return str(path)
        skipped.append(f"{path} ({reason})")
    raise ConfigError(f"--ckpt_path last: no readable checkpoint: {'; '.join(skipped)}")


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


__all__ = ["checked_checkpoint", "newest_readable", "unreadable_reason"]
