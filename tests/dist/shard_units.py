"""Checks of :mod:`urpo.strategies` on 2 ranks without Lightning (``torch.distributed.run --nproc_per_node=2``).

Writes ``<out>/rank<R>.json`` with one entry per check; the test asserts on them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.dist.common import fixed_sequences
from urpo.args import LoraArgs
from urpo.lora import apply_lora
from urpo.sequences import collate, completion_logits, token_logprobs
from urpo.strategies import (
    FSDP2Strategy, FSDPSettings, apply_fsdp, decoder_layers, fsdp_settings, shard_model, unsharded,
)

FP32 = FSDPSettings(param_dtype=None, reduce_dtype=None)


def load(model_dir: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()


def batch_for(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return collate(fixed_sequences(0, vocab=len(tokenizer))[:4], tokenizer.pad_token_id, torch.device("cpu"))


def grads_after_backward(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    logp = token_logprobs(completion_logits(model, batch), batch.completion_ids)  # [B, C]
    (logp * batch.completion_mask).sum().backward()
    return {n: p.grad.full_tensor().clone() for n, p in model.named_parameters() if p.grad is not None}


def reshard_flags(model: torch.nn.Module) -> list[bool]:
    # Internal state, read only by this test: a param group reshards after forward iff it has post-forward mesh info.
    return [g.post_forward_mesh_info is not None for g in param_groups(model)]


def param_groups(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m._get_fsdp_state()._fsdp_param_group for m in model.modules() if isinstance(m, FSDPModule)]


def main(model_dir: str, out: Path) -> None:
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    report: dict[str, object] = {}
    batch = batch_for(model_dir)

    plain = load(model_dir)
    report["layers"] = [type(m).__name__ for m in decoder_layers(plain)]
    with_ac, without_ac = load(model_dir), load(model_dir)
    shard_model(with_ac, mesh, FSDPSettings(param_dtype=None, reduce_dtype=None, activation_checkpointing=True))
    shard_model(without_ac, mesh, FP32)
    report["checkpointing_on"] = bool(with_ac.is_gradient_checkpointing) and not without_ac.is_gradient_checkpointing
    a, b = grads_after_backward(with_ac, batch), grads_after_backward(without_ac, batch)
    report["checkpointing_grad_diff"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    report["checkpointing_grad_count"] = [len(a), len(b)]

    before = reshard_flags(without_ac)
    with torch.no_grad(), unsharded(without_ac, FP32):
        report["gathered_inside"] = all(g.is_unsharded for g in param_groups(without_ac))
        without_ac(input_ids=batch.input_ids)  # a forward must not reshard while gathered
        report["still_gathered_after_forward"] = all(g.is_unsharded for g in param_groups(without_ac))
    report["sharded_after"] = all(g.is_sharded for g in param_groups(without_ac))
    report["reshard_flags_restored"] = reshard_flags(without_ac) == before
    report["reshard_flags"] = before

    peft_model = apply_lora(load(model_dir), LoraArgs(r=4))
    report["peft_layers"] = len(decoder_layers(peft_model))
    shard_model(peft_model, mesh, FP32)
    with torch.no_grad():
        ids = peft_model.generate(input_ids=batch.input_ids[:1, :6], max_new_tokens=3, do_sample=False,
                                  pad_token_id=0, synced_gpus=True)
    report["peft_generate_shape"] = list(ids.shape)

    policy = load(model_dir)
    module = SimpleNamespace(
        trainer=SimpleNamespace(strategy=FSDP2Strategy()), device_mesh=mesh, policy=policy,
        reference=copy.deepcopy(policy).eval().requires_grad_(False), engine=SimpleNamespace(sync_weights=lambda: None),
    )
    module.engine = apply_fsdp(
        module.policy, module.reference, module.device_mesh, fsdp_settings(module.trainer.strategy), module.engine
    )
    report["reference_dtype"] = str(next(module.reference.parameters()).dtype)
    report["policy_dtype"] = str(next(module.policy.parameters()).dtype)
    report["engine_wrapped"] = type(module.engine).__name__
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
