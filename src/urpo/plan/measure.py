"""Measure a real run's peak memory, to hold ``urpo plan``'s estimate against it.

``PeakMemory`` is a Lightning callback. In ``setup`` (after the tokenizer, before the model is loaded; libraries
imported only for the model, such as peft, are imported first) it takes the process's baseline and resets the peak
counter; when training ends it reads the peak and writes both, with the step times and token counts of the run, to a
JSON file. On CUDA the figures are the caching allocator's
(``torch.cuda.max_memory_allocated``, plus ``max_memory_reserved``); on CPU they are the process's resident set
(``VmRSS`` / ``VmHWM`` of ``/proc/self/status``; Linux resets the high-water mark through ``/proc/self/clear_refs``).

    trainer:
      callbacks:
        - class_path: urpo.plan.measure.PeakMemory
          init_args: {path: runs/peak_memory.json}
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from urpo import metric_keys as keys


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_host_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_rss() -> float:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    return 1024.0 * (_status_kib("VmRSS") or 0)


def host_peak() -> float:
    """Peak resident set size since start or the last reset, in bytes."""
    return 1024.0 * (_status_kib("VmHWM") or 0)


def _lazy_imports(module: L.LightningModule) -> list[str]:
    """Libraries urpo imports only once the model loads (peft, bitsandbytes): their code would count as memory."""
    names = []
    if getattr(module, "lora", None) is not None:
        names.append("peft")
    if getattr(module, "quantization", None) is not None:
        names.append("bitsandbytes")
    return names


class PeakMemory(L.Callback):
    """Record the peak memory of a run above its baseline before the model loads, and its step times.

    Args:
        path: JSON file the figures are written to at the end of training (None: only printed).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.figures: dict[str, Any] = {}
        self._step_start = 0.0
        self._step_seconds: list[float] = []
        self._tokens: list[float] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in _lazy_imports(pl_module):
            importlib.import_module(name)  # code, not tensors: keep it out of the measured peak
        cuda = trainer.strategy.root_device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline = float(torch.cuda.memory_allocated())
        else:
            reset_host_peak()
            baseline = host_rss()
        self.figures = {"device": "cuda" if cuda else "cpu", "baseline_bytes": baseline}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.figures.get("device") == "cuda":
            torch.cuda.synchronize()
        self._step_seconds.append(time.perf_counter() - self._step_start)
        metrics = trainer.callback_metrics
        if keys.COMPLETION_TOKENS in metrics:
            self._tokens.append(float(metrics[keys.COMPLETION_TOKENS]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.figures.get("device") == "cuda":
            peak = float(torch.cuda.max_memory_allocated())
            self.figures["peak_reserved_bytes"] = float(torch.cuda.max_memory_reserved())
        else:
            peak = host_peak()
        figures = self.figures
        figures["peak_bytes"] = peak
        figures["peak_above_baseline_bytes"] = peak - figures["baseline_bytes"]
        figures["step_seconds"] = self._step_seconds
        figures["completion_tokens"] = self._tokens
        if trainer.global_rank != 0:
            return
        print(
            f"urpo memory: peak {figures['peak_above_baseline_bytes'] / 1e9:.3f} GB above the baseline before the "
            f"model loaded ({figures['device']}); steps {', '.join(f'{s:.1f}' for s in self._step_seconds)} s"
        )
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps(figures, indent=2))
