"""LoRA, QLoRA and 8-bit optimizers: only adapters train, the reference is the base, exports merge; CPU and GPU."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from urpo.args import GRPOArgs, LoggingArgs, LoraArgs, PolicyArgs, QuantizationArgs, SamplingArgs
from urpo.data.schema import VerifiableRow
from urpo.errors import ConfigError
from urpo.export import export_policy
from urpo.lora import keep_cpu_4bit_trainable
from urpo.module import URPOModule
from urpo.rewards.base import RewardCallback, RewardResult
from urpo.sequences import collate, completion_logits, token_logprobs

ROOT = Path(__file__).resolve().parents[1]


class SpreadReward(RewardCallback):
    """Rewards 0, 1, 2, ... within each group, so every group has a non-zero advantage."""

    default_kinds = ("verifiable",)

    def score(self, episodes):
        g = len(episodes[0].completions)
        return RewardResult(torch.arange(g, dtype=torch.float).repeat(len(episodes), 1))


def lora_module(model_dir: str, device_optimizer=None, quantization: QuantizationArgs | None = None, **grpo):
    return URPOModule(
        policy=PolicyArgs(name_or_path=model_dir, lora=LoraArgs(r=4), quantization=quantization),
        rewards=[SpreadReward()],
        grpo=GRPOArgs(**{"num_generations": 4, **grpo}),
        sampling=SamplingArgs(max_new_tokens=8),
        optimizer=device_optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )


def fit(module: URPOModule, steps: int = 2, accelerator: str = "cpu") -> L.Trainer:
    rows = [VerifiableRow(source="toy", index=i, prompt=f"What is {i} + 1?", answer=str(i + 1)) for i in range(4)]
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([rows] * steps, batch_size=None, collate_fn=lambda b: b))
    return trainer


def some_batch(module: URPOModule):
    from tests.dist.common import fixed_sequences

    return collate(fixed_sequences(0, vocab=len(module.tokenizer))[:3], module.tokenizer.pad_token_id, module.device)


@torch.no_grad()
def logprobs(model: torch.nn.Module, batch) -> torch.Tensor:
    return token_logprobs(completion_logits(model, batch), batch.completion_ids) * batch.completion_mask  # [B, C]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_quantization_needs_lora(tiny_model_dir):
    with pytest.raises(ConfigError, match="needs model.policy.lora"):
        URPOModule(policy=PolicyArgs(name_or_path=tiny_model_dir, quantization=QuantizationArgs()))


def test_lora_trains_only_adapters_and_its_reference_is_the_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    L.seed_everything(0)
    module = lora_module(tiny_model_dir, beta=0.1)
    module.configure_model()
    assert module.reference is None  # no second copy: the reference is the policy with adapters off
    before = snapshot(module.policy)
    fit(module)
    adapters = {n for n in before if "lora_" in n}
    assert adapters and changed(before, module.policy) == adapters

    batch = some_batch(module)
    base = logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), batch)
    with module._reference_model() as reference:
        torch.testing.assert_close(logprobs(reference, batch), base, rtol=0, atol=1e-6)
    assert (logprobs(module.policy, batch) - base).abs().max() > 1e-3  # adapters are back on after the block
    assert all(p.requires_grad for n, p in module.policy.named_parameters() if "lora_" in n)


def test_lora_export_merges_adapters_into_a_plain_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    L.seed_everything(0)
    module = lora_module(tiny_model_dir)
    trainer = fit(module)
    export_policy(module.policy, module.tokenizer, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not any("lora" in k or "base_layer" in k for k in exported.state_dict())
    batch = some_batch(module)
    module.policy.eval()
    torch.testing.assert_close(logprobs(exported, batch), logprobs(module.policy, batch), rtol=0, atol=1e-5)
    adapter = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and trainer.global_step == 2


def test_qlora_on_cpu_generates_then_trains_with_adamw8bit(tiny_model_dir, tmp_path):
    """4-bit NF4 base, generate (eval, no grad) then train: the avx512_bf16 repacking pitfall must not bite."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    L.seed_everything(0)
    module = lora_module(
        tiny_model_dir,
        quantization=QuantizationArgs(bits=4),
        beta=0.1,
        # min_8bit_size=1: bitsandbytes keeps 32-bit states for tensors under 4096 elements (all of the tiny adapters).
        device_optimizer=lambda params: bnb.optim.AdamW8bit(params, lr=1e-2, min_8bit_size=1),
    )
    module.configure_model()
    layers = [m for m in module.policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert keep_cpu_4bit_trainable(module.policy) == 14
    before = snapshot(module.policy)
    trainer = fit(module, steps=2)
    assert changed(before, module.policy) == {n for n in before if "lora_" in n}
    state = trainer.optimizers[0].state
    assert any(s.get("state1") is not None and s["state1"].dtype == torch.uint8 for s in state.values())

    export_policy(module.policy, module.tokenizer, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # plain weights: no bitsandbytes
    assert not any(type(m).__name__ == "Linear4bit" for m in exported.modules())
    batch = some_batch(module)
    module.policy.eval()
    # The policy runs its matmuls in bf16 (compute_dtype); the merged export runs in float32.
    assert (logprobs(exported, batch) - logprobs(module.policy, batch)).abs().max() < 0.05


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
def test_int8_base_trains_and_exports_dequantized(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    L.seed_everything(0)
    module = lora_module(tiny_model_dir, quantization=QuantizationArgs(bits=8))
    fit(module, steps=1)
    export_policy(module.policy, module.tokenizer, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not any(k.endswith(("SCB", "weight_format")) for k in exported.state_dict())
    batch = some_batch(module)
    module.policy.eval()
    assert (logprobs(exported, batch) - logprobs(module.policy, batch)).abs().max() < 0.05


def test_adamw8bit_from_yaml_trains_the_full_model(tiny_model_dir, tmp_path):
    """``model.optimizer: {class_path: bitsandbytes.optim.AdamW8bit}`` works on CPU through the CLI."""
    from transformers import AutoModelForCausalLM

    from urpo.cli import main

    optimizer = json.dumps({"class_path": "bitsandbytes.optim.AdamW8bit", "init_args": {"lr": 1e-3}})
    main(
        [
            "fit",
            "--config",
            str(ROOT / "tests" / "dist" / "fsdp2_tiny.yaml"),
            "--model.policy.name_or_path",
            tiny_model_dir,
            "--trainer.strategy",
            "auto",
            "--trainer.devices",
            "1",
            "--trainer.max_steps",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.callbacks",
            "[]",
            "--model.optimizer",
            optimizer,
            "--data.sources",
            json.dumps([{"adapter": "gsm8k", "path": str(ROOT / "src/urpo/data/samples/gsm8k_train.jsonl")}]),
        ]
    )
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp2" / "version_0" / "hf_model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)


@pytest.mark.gpu
def test_qlora_on_gpu_generates_then_trains(tiny_model_dir):
    import bitsandbytes as bnb

    L.seed_everything(0)
    module = lora_module(
        tiny_model_dir,
        quantization=QuantizationArgs(bits=4, compute_dtype="bfloat16"),
        beta=0.1,
        device_optimizer=lambda params: bnb.optim.PagedAdamW8bit(params, lr=1e-2),
    )
    before = None

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal before
            before = snapshot(pl_module.policy)

    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        max_steps=2,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Snapshot()],
    )
    rows = [VerifiableRow(source="toy", index=i, prompt=f"What is {i} + 1?", answer=str(i + 1)) for i in range(4)]
    trainer.fit(module, DataLoader([rows] * 2, batch_size=None, collate_fn=lambda b: b))
    assert next(m for m in module.policy.modules() if isinstance(m, bnb.nn.Linear4bit)).weight.device.type == "cuda"
    assert changed(before, module.policy) == {n for n in before if "lora_" in n}
    assert torch.isfinite(torch.tensor(float(trainer.logged_metrics["train/loss"])))
