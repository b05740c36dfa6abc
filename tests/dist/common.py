"""Helpers shared by the multi-process scripts in this folder and the tests that launch them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from urpo.episode import TrainSequence
from urpo.sequences import MicroBatch

ROOT = Path(__file__).resolve().parents[2]


def fixed_sequences(step: int, vocab: int, count: int = 8) -> list[TrainSequence]:
    """The global batch of hand-made completions of a step (by global step, which a resume restores; the epoch
    counter is not restored the same way): varied lengths, advantages of both signs, two completions per prompt."""
    generator = torch.Generator().manual_seed(step)
    sequences, prompts = [], {}
    for index in range(count):
        # Sequences i and i + 2 share a prompt, as a group's completions do; split between two ranks (global[r::2]),
        # each rank still holds both of a pair, so the shared-prefix update runs each prompt once on every rank.
        group = (index // 4, index % 2)
        if group not in prompts:
            prompt_len = int(torch.randint(3, 12, (1,), generator=generator))
            prompts[group] = torch.randint(3, vocab, (prompt_len,), generator=generator).tolist()
        completion_len = int(torch.randint(1, 24, (1,), generator=generator))
        completion = torch.randint(3, vocab, (completion_len,), generator=generator).tolist()
        advantage = float(torch.randn((), generator=generator))
        sequences.append(TrainSequence(prompts[group], completion, advantage, index, 0))
    return sequences


def shard_report(model: torch.nn.Module) -> dict[str, list[list[int]]]:
    """For every DTensor parameter: [local shape, full shape]."""
    from torch.distributed.tensor import DTensor

    return {
        name: [list(p.to_local().shape), list(p.shape)] for name, p in model.named_parameters() if isinstance(p, DTensor)
    }


@torch.no_grad()
def base_logprobs(model_dir: str, batch: MicroBatch) -> torch.Tensor:
    """Completion-token log-probs of a fresh, unsharded copy of the saved base model."""
    from transformers import AutoModelForCausalLM

    from urpo.sequences import completion_logits, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(batch.input_ids.device)
    return token_logprobs(completion_logits(model, batch), batch.completion_ids) * batch.completion_mask


def run_script(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``tests/dist/<script>`` in a fresh interpreter; fail with its output if it fails or hangs."""
    return _run([str(ROOT / "tests" / "dist" / script), *args], timeout)


def run_module(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m <module> ...`` in a fresh interpreter; fail with its output if it fails or hangs."""
    return _run(["-m", module, *args], timeout)


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # two ranks on two cores: avoid oversubscription
    command = [sys.executable, *arguments]
    shown = " ".join(arguments)
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{shown} hung for {timeout} s:\n{_tail(error.stdout)}{_tail(error.stderr)}") from None
    if result.returncode != 0:
        raise AssertionError(f"{shown} failed ({result.returncode}):\n{_tail(result.stdout)}{_tail(result.stderr)}")
    return result


def _tail(text: str | bytes | None, chars: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-chars:]
