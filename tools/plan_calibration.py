"""``urpo plan`` against real runs: the plan's peak next to the measured peak of a short ``urpo fit`` of each case.

    python tools/plan_calibration.py                  # every case (tiny and ~100M models, CPU): ~10 minutes
    python tools/plan_calibration.py --cases tiny_full tiny_lora
    python tools/plan_calibration.py --json out.json

Each case is one YAML config that both ``urpo fit`` and ``urpo plan`` read. The run is a subprocess (its memory is
its own) with :class:`urpo.plan.measure.PeakMemory` as a callback: the measured figure is the peak resident set above
the baseline taken before the model loads (on CPU, with glibc's mmap threshold fixed: see MMAP_THRESHOLD; on CUDA
the allocator's peak). Models are random Qwen2 networks
built offline (tests/helpers.py, tools/bench_trl.py); prompts are GSM8K questions truncated to the configured
length, and completions of a random model nearly always run to ``max_new_tokens``. A benchmark: it prints a table
and asserts nothing (tests/plan/test_plan.py checks one small case).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from urpo.rewards.base import RewardCallback, RewardResult

ROOT = Path(__file__).resolve().parents[1]
MMAP_THRESHOLD = 65536
"""glibc serves allocations of this size and more with mmap, returned to the system when freed. Its default threshold
moves up to 32 MB as blocks are freed, after which freed tensors stay in the heap and in the resident set, and the
measured peak then depends on the allocation history rather than on the tensors alive at once (a first forward and
backward of the tiny model peaked 383 MB above its baseline with the default, 277 MB with the fixed threshold,
steady at 254-268 MB in later steps). A fixed threshold makes RSS follow live tensors, as CUDA's allocator peak does."""
GSM8K = str(ROOT / "src/urpo/data/samples/gsm8k_train.jsonl")

BASE: dict[str, Any] = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "max_steps": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "curves": {"enabled": False},
    "model": {
        "policy": {"name_or_path": "MODEL"},
        "rewards": [{"class_path": "tools.plan_calibration.LengthReward"}],
        "grpo": {"num_generations": 8, "max_tokens_per_micro_batch": 16384, "skip_zero_advantage": False},
        "sampling": {"max_new_tokens": 128},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-5}},
        "logging": {"samples_every_n_steps": 0, "export_dir": None},
    },
    "data": {
        "sources": [{"adapter": "gsm8k", "path": GSM8K}],
        "batch_size": 8,
        "max_prompt_tokens": 128,
        "prompt_overflow": "truncate",
    },
}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (model size, changes to BASE as dotted keys)
    "tiny_full": ("tiny", {}),
    "tiny_test": ("tiny", {"trainer.max_steps": 1}),  # tests/plan/test_plan.py: one step (optimizer state ~1 MB)
    "tiny_lora": ("tiny", {"model.policy.lora": {"r": 8}}),
    "tiny_beta": ("tiny", {"model.grpo.beta": 0.04}),
    "tiny_micro": ("tiny", {"model.grpo.max_tokens_per_micro_batch": 2048}),
    "100m_full": (
        "100m",
        {
            "model.grpo.max_tokens_per_micro_batch": 2048,
            "model.grpo.num_generations": 4,
            "data.batch_size": 4,
            "model.sampling.max_new_tokens": 64,
        },
    ),
    "100m_lora_beta": (
        "100m",
        {
            "model.policy.lora": {"r": 16},
            "model.grpo.beta": 0.04,
            "model.grpo.num_generations": 4,
            "model.grpo.max_tokens_per_micro_batch": 2048,
            "data.batch_size": 4,
            "model.sampling.max_new_tokens": 64,
        },
    ),
    "100m_beta_ckpt": (
        "100m",
        {
            "model.grpo.beta": 0.04,
            "model.policy.gradient_checkpointing": True,
            "model.grpo.num_generations": 4,
            "model.grpo.max_tokens_per_micro_batch": 1024,
            "data.batch_size": 4,
            "model.sampling.max_new_tokens": 64,
        },
    ),
}


class LengthReward(RewardCallback):
    """A reward that varies within groups and costs nothing: the calibration measures tensors, and MathVerifier's
    first call imports sympy and math-verify (~40 MB of the process, none of it tensors) after the baseline."""

    default_kinds = ("verifiable", "preference", "open")

    def score(self, episodes):
        import torch

        return RewardResult(torch.tensor([[float(len(c) % 5) for c in e.completions] for e in episodes]))


def case_config(model_dir: str, changes: dict[str, Any], measure_path: str) -> dict[str, Any]:
    """BASE with the case's changes, its model, and the PeakMemory callback writing to ``measure_path``."""
    config = copy.deepcopy(BASE)
    config["model"]["policy"]["name_or_path"] = model_dir
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    config["trainer"]["callbacks"] = [
        {"class_path": "urpo.plan.measure.PeakMemory", "init_args": {"path": measure_path}}
    ]
    return config


def build_model(size: str, folder: Path) -> str:
    """The random Qwen2 of ``size`` ('tiny': tests/helpers.py; '100m': tools/bench_trl.py), built once."""
    if (folder / "config.json").is_file():
        return str(folder)
    sys.path.insert(0, str(ROOT))
    if size == "tiny":
        from tools.tiny_model import build_tiny_model

        build_tiny_model(folder)
    else:
        from tools.bench_trl import build_model as build_sized

        build_sized(folder, size)
    return str(folder)


def measure(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``urpo fit`` on ``config`` in a subprocess and return PeakMemory's figures."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    }
    cmd = [sys.executable, "-m", "urpo.cli", "fit", "--config", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, check=False)
    result = Path(config["trainer"]["callbacks"][0]["init_args"]["path"])
    if out.returncode != 0 or not result.is_file():
        raise RuntimeError(f"urpo fit failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(result.read_text())


def planned(config: dict[str, Any]) -> tuple[float, str, dict[str, float]]:
    """The plan's peak for ``config`` (CPU: no CUDA foreach temporaries), its phase and every term."""
    from urpo.plan.architecture import model_facts
    from urpo.plan.estimate import memory_plan
    from urpo.plan.setup import run_setup

    setup = run_setup(config)
    plan = memory_plan(setup, model_facts(setup.model), cuda=False)
    return plan.peak, plan.peak_phase, {t.name: t.bytes for t in plan.terms}


def run_case(name: str, models: Path, workdir: Path) -> dict[str, Any]:
    size, changes = CASES[name]
    model_dir = build_model(size, models / size)
    case_dir = workdir / name
    case_dir.mkdir(parents=True, exist_ok=True)
    config = case_config(model_dir, changes, str(case_dir / "peak.json"))
    peak, phase, terms = planned(config)
    figures = measure(config, case_dir)
    measured = figures["peak_above_baseline_bytes"]
    return {
        "case": name,
        "planned_bytes": peak,
        "planned_phase": phase,
        "measured_bytes": measured,
        "ratio": peak / measured if measured > 0 else float("nan"),
        "terms": terms,
        "run": figures,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--workdir", default=None, help="where models and runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        rows = []
        print("| case | plan peak | measured peak | plan / measured | plan's peak phase |")
        print("| --- | ---: | ---: | ---: | --- |")
        for name in [c for c in args.cases if c != "tiny_test" or args.cases != list(CASES)]:
            row = run_case(name, work / "models", work / "runs")
            rows.append(row)
            print(
                f"| {name} | {row['planned_bytes'] / 1e6:.0f} MB | {row['measured_bytes'] / 1e6:.0f} MB | "
                f"{row['ratio']:.2f} | {row['planned_phase']} |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
