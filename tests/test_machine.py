"""tools.machine names the CPU and float path behind a figure, and its documented overrides really narrow it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tools.machine import FLOAT_PATH_ENV, describe, float_path, simd

ROOT = Path(__file__).resolve().parents[1]


def test_simd_names_the_features_that_pick_kernels_in_a_fixed_order():
    assert simd({"fma", "avx512f", "avx2", "sse4_2"}) == "avx2, avx512f"
    assert simd({"amx_bf16", "avx512_bf16", "avx512f", "avx2"}) == "avx2, avx512f, avx512_bf16, amx_bf16"
    assert simd({"sse4_2"}) == "no AVX2"


def test_float_path_of_this_process(monkeypatch):
    for name in FLOAT_PATH_ENV:
        monkeypatch.delenv(name, raising=False)
    path = float_path()
    assert path["aten_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert path["cores"] == os.cpu_count() and path["torch"] == torch.__version__ and path["overrides"] == {}
    line = describe(path)
    assert line.startswith(f"{path['cpu']} ({path['simd']}), {path['cores']} cores; torch {torch.__version__}")
    assert "forced" not in line


def test_the_documented_overrides_narrow_the_kernels_and_are_recorded():
    """docs/evidence.md's second float path on one CPU: ATen dispatches to its portable kernels, and the record and
    its report line say so (a fresh process: ATen reads the variable once)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = "import json; from tools.machine import float_path; print(json.dumps(float_path()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path = json.loads(out.stdout)
    assert path["aten_kernels"] == "DEFAULT"
    assert path["overrides"] == {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    assert describe(path).endswith("ATen kernels DEFAULT (forced: ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE)")
