"""tools/gpu_check.sh: its CPU fallback runs end to end, and its summary line reads right for GPU results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_fallback_runs_every_stage_it_can_and_ends_with_one_summary_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        ["bash", str(ROOT / "tools/gpu_check.sh"), str(tmp_path / "check"), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: CPU FALLBACK (no CUDA GPU; nothing GPU-specific was checked)")
    assert "pytest skipped (no CUDA GPU)" in last and "vllm skipped" in last and "fsdp2 skipped" in last
    results = json.loads((tmp_path / "check/gpu_check.json").read_text())
    hf = results["stages"]["hf"]
    assert hf["status"] == "pass" and hf["peak_gb"] > 0 and hf["plan_peak_gb"] > 0 and hf["completion_tokens_per_s"] > 0
    assert f"peak {hf['peak_gb']:.2f} GB vs plan {hf['plan_peak_gb']} GB" in last


def test_summary_line_of_a_gpu_run_names_failures():
    sys.path.insert(0, str(ROOT))
    from tools.gpu_check import summary

    stage = {
        "status": "pass",
        "median_step_s": 1.5,
        "completion_tokens_per_s": 2000.0,
        "peak_gb": 9.1,
        "plan_peak_gb": 10.2,
    }
    results = {
        "device": "NVIDIA H100",
        "stages": {
            "pytest": {"status": "pass"},
            "hf": stage,
            "vllm": {"status": "skipped", "why": "vllm is not installed"},
            "fsdp2": {"status": "timeout", "exit": 124},
        },
    }
    line = summary(results, 2, Path("out/gpu_check.json"))
    assert line.startswith("gpu_check: FAIL on 2 x NVIDIA H100: pytest pass; hf pass (1.50 s/step, 2000.0 tok/s")
    assert "vllm skipped (vllm is not installed)" in line and "fsdp2 timeout (see fsdp2.log)" in line
    assert "\n" not in line
