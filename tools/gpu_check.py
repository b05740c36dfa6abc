"""Everything urpo can check on a machine with CUDA GPUs, offline and unattended, in under 8 minutes.

    bash tools/gpu_check.sh [OUT_DIR]      # the entry point (this file does the work)

Stages, each under its own time limit, each recorded whatever happens to the others:

1. ``pytest -m gpu``: the gpu-marked tests (FSDP2 on CUDA in bf16 with LoRA and checkpointing, QLoRA).
2. ``hf``: three ``urpo fit`` steps in bf16 with the HF engine on a random model of Qwen2.5-0.5B's architecture
   (built offline from urpo's bundled config.json; a small BPE tokenizer is trained on the fly), all three row kinds
   (verifier, preference, self-judge). Prints tokens/s, step time and peak GPU memory next to ``urpo plan``'s peak.
3. ``vllm``: the same with ``rollout: {engine: vllm}``, when vllm is installed.
4. ``fsdp2``: the same with ``urpo.strategies.FSDP2Strategy`` over every visible GPU.

Every figure goes to ``OUT_DIR/gpu_check.json``; the last line printed is a one-line summary. Without a CUDA GPU it
falls back clearly: the gpu stages are reported as skipped, and the ``hf`` stage runs one CPU step on the tiny test
model, so that the plumbing (config, measurement, plan, JSON, summary) is still exercised.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECK_ARCHITECTURE = "Qwen/Qwen2.5-0.5B-Instruct"
LIMITS = {"pytest": 150, "hf": 80, "vllm": 100, "fsdp2": 80}
"""Seconds each stage may take (a stage past its limit is killed and reported as 'timeout')."""
TOTAL_SECONDS = 470
"""The whole check stops starting stages past this point (each stage's limit is cut to what is left): < 8 minutes."""
_START = time.monotonic()


CPU_LIMIT = 480
"""The CPU fallback's one step of the tiny model has no 8-minute promise to keep (a loaded CPU is slow)."""


def time_left(stage: str, gpus: int = 1) -> int:
    """Seconds ``stage`` may run: its own limit, cut to what is left of the whole check's budget (on GPUs)."""
    if gpus == 0:
        return CPU_LIMIT
    return int(min(LIMITS[stage], TOTAL_SECONDS - (time.monotonic() - _START)))


SAMPLES = ROOT / "src/urpo/data/samples"


def build_check_model(folder: Path, on_gpu: bool) -> str:
    """A random model of Qwen2.5-0.5B's architecture (GPU) or the tiny test model (CPU fallback), with a tokenizer."""
    sys.path.insert(0, str(ROOT))
    from tools.tiny_model import build_tiny_model

    if (folder / "config.json").is_file():
        return str(folder)
    if not on_gpu:
        return str(build_tiny_model(folder))
    import torch
    from transformers import AutoModelForCausalLM

    from urpo.args import ModelArgs
    from urpo.plan.architecture import load_config

    tokenizer = sample_tokenizer()
    config, _ = load_config(ModelArgs(CHECK_ARCHITECTURE))
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def sample_tokenizer(vocab: int = 8192):
    """A byte-level BPE trained on urpo's bundled samples: English at a few characters a token, like a real one."""
    from tools.tiny_model import chatml_tokenizer, tiny_corpus

    samples = [line for path in sorted(SAMPLES.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return chatml_tokenizer(tiny_corpus() + samples, vocab_size=vocab)


def check_config(model_dir: str, out: Path, stage: str, gpus: int) -> dict[str, Any]:
    """The ``urpo fit`` config of a training stage ('hf', 'vllm' or 'fsdp2'); ``gpus`` 0 is the CPU fallback."""
    on_gpu = gpus > 0
    trainer: dict[str, Any] = {
        "accelerator": "gpu" if on_gpu else "cpu",
        "devices": gpus if stage == "fsdp2" else 1,
        "precision": "bf16-mixed" if on_gpu else "32-true",
        "max_steps": 3 if on_gpu else 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        # The CLI saves the resolved config.yaml under the root dir: in OUT_DIR, not the repository.
        "default_root_dir": str(out / stage),
        "callbacks": [
            {"class_path": "urpo.plan.measure.PeakMemory", "init_args": {"path": str(out / f"{stage}_peak.json")}}
        ],
    }
    model: dict[str, Any] = {
        "policy": {"name_or_path": model_dir, "dtype": "float32"},
        "rewards": [
            {"class_path": "urpo.rewards.MathVerifier", "init_args": {"format_reward": 0.1}},
            {"class_path": "urpo.rewards.PreferenceReward"},
            {"class_path": "urpo.rewards.SelfJudge", "init_args": {"max_prompt_tokens": 3072, "max_new_tokens": 64}},
        ],
        "grpo": {"num_generations": 8 if on_gpu else 4, "max_tokens_per_micro_batch": 8192 if on_gpu else 2048},
        "sampling": {"max_new_tokens": 256 if on_gpu else 16, "max_batch_size": 64},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1.0e-6}},
        "logging": {"samples_every_n_steps": 0, "export_dir": None},
    }
    if stage == "vllm":
        # no graph capture: the check is short
        model["rollout"] = {"engine": "vllm", "vllm": {"kv_cache_memory_bytes": 4 << 30, "enforce_eager": True}}
    if stage == "fsdp2":
        trainer["precision"] = "32-true"  # FSDP2's mixed-precision policy computes in bf16
        trainer["strategy"] = {
            "class_path": "urpo.strategies.FSDP2Strategy",
            "init_args": {"param_dtype": "bfloat16", "activation_checkpointing": True},
        }
    sources = [
        {"adapter": "gsm8k", "path": str(SAMPLES / "gsm8k_train.jsonl")},
        {"adapter": "hh_rlhf", "path": str(SAMPLES / "hh_rlhf_harmless_base_test.jsonl")},
        {"adapter": "instructions", "path": str(SAMPLES / "alpaca_eval_instructions.jsonl")},
    ]
    mixture = {"verifiable": 0.5, "preference": 0.25, "open": 0.25}
    if not on_gpu:  # the tiny tokenizer spells English nearly byte by byte: HH-RLHF dialogues would not fit
        sources, mixture = [sources[0], sources[2]], {"verifiable": 0.5, "open": 0.5}
    data = {
        "sources": sources,
        "mixture": mixture,
        "batch_size": 8 if on_gpu else 4,
        "max_prompt_tokens": 1024 if on_gpu else 128,
        "prompt_overflow": "truncate",
    }
    return {"seed_everything": 0, "trainer": trainer, "curves": {"enabled": False}, "model": model, "data": data}


def run(cmd: list[str], limit: int, log: Path) -> tuple[int, float]:
    """Run a command with a time limit, its output to ``log``; returns (exit status, seconds). 124: timed out."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            code = subprocess.run(
                cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=limit
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start


def pytest_stage(out: Path, gpus: int) -> dict[str, Any]:
    if gpus == 0:
        return {"status": "skipped", "why": "no CUDA GPU"}
    log = out / "pytest_gpu.log"
    if time_left("pytest") < 10:
        return {"status": "skipped", "why": "out of time"}
    code, seconds = run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], time_left("pytest"), log
    )
    tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
    return {
        "status": "pass" if code == 0 else ("timeout" if code == 124 else "fail"),
        "exit": code,
        "seconds": round(seconds, 1),
        "result": tail[0] if tail else "",
    }


def training_stage(stage: str, model_dir: str, out: Path, gpus: int) -> dict[str, Any]:
    """Three ``urpo fit`` steps of ``stage``, measured, next to ``urpo plan``'s estimate of the same config."""
    config = check_config(model_dir, out, stage, gpus)
    path = out / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    limit = time_left(stage, gpus)
    if limit < 10:
        return {"status": "skipped", "why": "out of time", "config": str(path)}
    code, seconds = run([sys.executable, "-m", "urpo.cli", "fit", "--config", str(path)], limit, out / f"{stage}.log")
    result: dict[str, Any] = {
        "status": "pass" if code == 0 else ("timeout" if code == 124 else "fail"),
        "exit": code,
        "seconds": round(seconds, 1),
        "config": str(path),
    }
    result.update(planned(config, gpus))
    peak_file = out / f"{stage}_peak.json"
    if code == 0 and peak_file.is_file():
        result.update(measured(json.loads(peak_file.read_text())))
    return result


def planned(config: dict[str, Any], gpus: int) -> dict[str, Any]:
    from urpo.plan.architecture import model_facts
    from urpo.plan.estimate import memory_plan
    from urpo.plan.setup import run_setup
    from urpo.plan.step_time import step_time

    try:
        setup = run_setup(config)
        facts = model_facts(setup.model)
        plan = memory_plan(setup, facts, cuda=gpus > 0)
        times = step_time(setup, facts, 1.0)
        return {
            "plan_peak_gb": round(plan.peak / 1e9, 3),
            "plan_peak_phase": plan.peak_phase,
            "plan_flops_per_step": times.train_flops + times.generate_flops,
        }
    except Exception as err:  # noqa: BLE001 - a failing plan is a finding to report, not a reason to stop
        return {"plan_error": f"{type(err).__name__}: {err}"}


def measured(figures: dict[str, Any]) -> dict[str, Any]:
    steps = figures.get("step_seconds") or []
    timed = steps[1:] or steps  # the first step includes warm-up (kernels, allocator, engine start)
    step = statistics.median(timed) if timed else float("nan")
    tokens = figures.get("completion_tokens") or []
    per_step_tokens = statistics.mean(tokens[1:] or tokens) if tokens else float("nan")
    return {
        "step_seconds": [round(s, 3) for s in steps],
        "median_step_s": round(step, 3),
        "completion_tokens_per_s": round(per_step_tokens / step, 1) if step == step and step > 0 else None,
        "peak_gb": round(figures["peak_above_baseline_bytes"] / 1e9, 3),
        "peak_reserved_gb": round(figures.get("peak_reserved_bytes", 0) / 1e9, 3) or None,
    }


def summary(results: dict[str, Any], gpus: int, json_path: Path) -> str:
    parts = []
    for name in ("pytest", "hf", "vllm", "fsdp2"):
        stage = results["stages"].get(name, {})
        status = stage.get("status", "skipped")
        text = f"{name} {status}"
        if "peak_gb" in stage:
            text += (
                f" ({stage['median_step_s']:.2f} s/step, {stage['completion_tokens_per_s']} tok/s, peak "
                f"{stage['peak_gb']:.2f} GB vs plan {stage.get('plan_peak_gb', '?')} GB)"
            )
        elif status not in ("pass", "skipped") or "why" in stage:
            text += f" ({stage.get('why') or stage.get('result') or 'see ' + name + '.log'})"
        parts.append(text)
    ok = all(
        results["stages"].get(n, {}).get("status") in ("pass", "skipped") for n in ("pytest", "hf", "vllm", "fsdp2")
    )
    head = "gpu_check: " + (
        "CPU FALLBACK (no CUDA GPU; nothing GPU-specific was checked)"
        if gpus == 0
        else ("PASS" if ok else "FAIL") + f" on {gpus} x {results['device']}"
    )
    return f"{head}: {'; '.join(parts)}; figures in {json_path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="gpu_check", help="folder for logs, configs and gpu_check.json")
    parser.add_argument("--cpu", action="store_true", help="force the CPU fallback even where a GPU is visible")
    args = parser.parse_args(argv)
    import torch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpus = 0 if args.cpu or not torch.cuda.is_available() else torch.cuda.device_count()
    device = torch.cuda.get_device_name(0) if gpus else "cpu"
    print(
        f"gpu_check: {gpus} CUDA GPU(s) ({device})"
        if gpus
        else "gpu_check: no CUDA GPU: CPU fallback (tiny model, one CPU step; the gpu stages are skipped)",
        flush=True,
    )
    results: dict[str, Any] = {"device": device, "gpus": gpus, "torch": torch.__version__, "stages": {}}
    model_dir = build_check_model(out / ("qwen2.5-0.5b-random" if gpus else "tiny-random"), on_gpu=gpus > 0)
    stages = results["stages"]
    stages["pytest"] = pytest_stage(out, gpus)
    print(f"  pytest -m gpu: {stages['pytest']}", flush=True)
    stages["hf"] = training_stage("hf", model_dir, out, gpus)
    print(f"  hf: {stages['hf']}", flush=True)
    from importlib.util import find_spec

    if gpus == 0:
        stages["vllm"] = stages["fsdp2"] = {"status": "skipped", "why": "no CUDA GPU"}
    else:
        stages["vllm"] = (
            training_stage("vllm", model_dir, out, gpus)
            if find_spec("vllm") is not None
            else {"status": "skipped", "why": "vllm is not installed"}
        )
        print(f"  vllm: {stages['vllm']}", flush=True)
        stages["fsdp2"] = training_stage("fsdp2", model_dir, out, gpus)
        print(f"  fsdp2: {stages['fsdp2']}", flush=True)
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(results, indent=2))
    line = summary(results, gpus, json_path)
    print(line, flush=True)
    failed = any(s.get("status") not in ("pass", "skipped") for s in stages.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
