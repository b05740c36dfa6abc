"""The machine a benchmark or evidence run ran on, named well enough to compare figures and float paths.

Two CPUs can give one seeded run different numbers: PyTorch and MKL pick kernels by the instructions the CPU has
(AVX2, AVX-512, AMX), and kernels of another width add in another order. :func:`float_path` records what decides
this, so a table says which path it came from; the environment variables in :data:`FLOAT_PATH_ENV` force a
narrower path on the same CPU (docs/evidence.md, "Across CPUs").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""The /proc/cpuinfo flags that change which kernels PyTorch and MKL run."""

FLOAT_PATH_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
"""Environment variables that narrow the kernels of PyTorch (ATen), MKL and oneDNN below what the CPU offers."""


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (None where there is no such file or field)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "?"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set((_cpuinfo("flags") or "").split())


def simd(flags: set[str] | None = None) -> str:
    """The SIMD features that matter here, comma-separated (``"no AVX2"`` on an older CPU)."""
    flags = cpu_flags() if flags is None else flags
    return ", ".join(f for f in SIMD_FLAGS if f in flags) or "no AVX2"


def float_path() -> dict[str, Any]:
    """What decides a seeded CPU run's floats: the CPU, torch's version, the kernel level ATen dispatches to, and
    any :data:`FLOAT_PATH_ENV` override set in this process's environment."""
    import torch

    return {
        "cpu": cpu_name(),
        "simd": simd(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "aten_kernels": torch.backends.cpu.get_cpu_capability(),
        "overrides": {name: os.environ[name] for name in FLOAT_PATH_ENV if name in os.environ},
    }


def describe(path: dict[str, Any]) -> str:
    """One line for a report: ``AMD EPYC (avx2), 2 cores; torch 2.13.0+cpu, ATen kernels AVX2``, plus overrides."""
    overrides = " ".join(f"{k}={v}" for k, v in path.get("overrides", {}).items())
    return (
        f"{path['cpu']} ({path['simd']}), {path['cores']} cores; torch {path['torch']}, ATen kernels "
        f"{path['aten_kernels']}" + (f" (forced: {overrides})" if overrides else "")
    )
