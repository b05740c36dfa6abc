"""LoRA and QLoRA: low-rank adapters (peft) on a full-precision or a 4-bit / 8-bit base (bitsandbytes).

With LoRA the frozen base *is* the reference policy: the KL term's log-probs come from the same model with its
adapters switched off (:func:`reference_policy`), so ``beta > 0`` costs no second copy of the weights. peft and
bitsandbytes are imported only when a run configures them, so ``import urpo`` works without either.

8-bit optimizer states (bitsandbytes) need no code here, only YAML::

    model:
      optimizer:
        class_path: bitsandbytes.optim.AdamW8bit
        init_args: {lr: 1.0e-5, weight_decay: 0.0}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from urpo.args import LoraArgs, ModelArgs, QuantizationArgs
from urpo.errors import ConfigError
from urpo.models import resolve_source, torch_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, args: LoraArgs) -> torch.nn.Module:
    """Freeze ``model`` and wrap it with trainable LoRA adapters (a peft ``PeftModel``)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(args.target_modules),
        use_rslora=args.use_rslora,
        init_lora_weights=args.init_lora_weights,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_quantized_model(
    args: ModelArgs, quantization: QuantizationArgs, device: torch.device, gradient_checkpointing: bool = False
) -> PreTrainedModel:
    """Load the base model quantized on ``device`` and prepared for adapter training (frozen, norms in fp32).

    It mirrors :func:`urpo.models.load_model` plus a ``quantization_config``; weights are quantized as they are
    placed, so the full-precision model never sits in GPU memory.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = resolve_source(args.name_or_path)
    if source.gguf_file is not None:
        raise ConfigError("quantization: load a GGUF model without it (it is dequantized on load), or convert it")
    compute = torch_dtype(quantization.compute_dtype)
    config = BitsAndBytesConfig(
        load_in_4bit=quantization.bits == 4,
        load_in_8bit=quantization.bits == 8,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_compute_dtype=compute if isinstance(compute, torch.dtype) else torch.bfloat16,
        bnb_4bit_use_double_quant=quantization.double_quant,
    )
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        source.location,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        dtype=torch_dtype(args.dtype),
        quantization_config=config,
        device_map={"": device},
        **kwargs,
    )
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    if device.type == "cpu":
        keep_cpu_4bit_trainable(model)
    return model


def keep_cpu_4bit_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its inference-only CPU layout; returns layers changed.

    On CPUs with avx512_bf16, the first eval-mode no-grad forward of a ``Linear4bit`` (every rollout does one)
    repacks its weight for a fast kernel that autograd cannot run, and every later training forward fails with
    "a view of a leaf Variable that requires grad is being used in an in-place operation" (seen with bitsandbytes 0.50
    on CPU).
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def is_lora(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` is a peft model whose adapters can be switched off."""
    return model is not None and hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


@contextmanager
def reference_policy(policy: torch.nn.Module, reference: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The reference policy to score with inside the block: ``reference`` if there is one, else the base of a LoRA
    ``policy`` with its adapters switched off (they are switched back on when the block ends)."""
    if reference is not None:
        yield reference
        return
    if not is_lora(policy):
        raise ConfigError("beta > 0 needs a reference policy: a frozen copy, or LoRA adapters to switch off")
    with policy.disable_adapter():
        yield policy


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full state dict of a LoRA model as a plain model of its base architecture.

    Adapters are folded into their base weights (``W + scale * B @ A``), 4-bit and 8-bit base weights are
    dequantized, and peft's name prefixes are removed, so ``AutoModelForCausalLM`` loads the result without peft or
    bitsandbytes. Works on a gathered FSDP2 state dict too: only the adapter scales are read from ``model``.

    Args:
        model: the peft model (possibly sharded; quantized weights are read from it directly).
        state: its full state dict (see :func:`urpo.export.full_state_dict`).
    """
    merged = dict(state)
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            _fold_adapters(name, module, merged)
        elif _is_bnb_layer(module) and f"{name}.weight" in merged:
            _replace_weight(merged, name, _quantized_weight(module))
    prefix = "base_model.model."
    return {k.removeprefix(prefix): v for k, v in merged.items()}


def _fold_adapters(name: str, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if getattr(module, "lora_magnitude_vector", None):
        raise ConfigError("export: DoRA adapters are not supported")
    base_key = f"{name}.base_layer.weight"
    weight = _quantized_weight(module.base_layer)
    weight = (weight if weight is not None else state[base_key]).float()  # [out, in]
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        a = state[f"{name}.lora_A.{adapter}.weight"].float()  # [r, in]
        b = state[f"{name}.lora_B.{adapter}.weight"].float()  # [out, r]
        delta = (b @ a) * module.scaling[adapter]  # [out, in]
        # Out of place: on an unsharded model the state dict shares storage with the live weights.
        weight = weight + (delta.T if getattr(module, "fan_in_fan_out", False) else delta)
    out_dtype = state[base_key].dtype if state[base_key].is_floating_point() else _compute_dtype(module.base_layer)
    for key in [k for k in state if k.startswith((f"{name}.lora_", f"{name}.base_layer."))]:
        if key.startswith(f"{name}.base_layer.bias"):
            state[f"{name}.bias"] = state[key]
        del state[key]
    state[f"{name}.weight"] = weight.to(out_dtype)


def _replace_weight(state: dict[str, torch.Tensor], name: str, weight: torch.Tensor) -> None:
    # Quantized weights come with extra entries: absmax, quant_map, ... under "<name>.weight." (4-bit), the row
    # scales "<name>.SCB" and "<name>.weight_format" (8-bit).
    extra = (f"{name}.weight.", f"{name}.SCB", f"{name}.weight_format")
    for key in [k for k in state if k.startswith(extra)]:
        del state[key]
    state[f"{name}.weight"] = weight


def _is_bnb_layer(layer: torch.nn.Module) -> bool:
    return type(layer).__name__ in ("Linear4bit", "Linear8bitLt")


def _quantized_weight(layer: torch.nn.Module) -> torch.Tensor | None:
    """The dequantized weight of a bitsandbytes layer (None for any other layer)."""
    kind = type(layer).__name__
    if kind == "Linear4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).cpu()
    if kind == "Linear8bitLt":
        import bitsandbytes.functional as bnbf

        # The row scales move from the weight to the layer's state at its first forward.
        scales = layer.weight.SCB if getattr(layer.weight, "SCB", None) is not None else layer.state.SCB
        return bnbf.int8_vectorwise_dequant(layer.weight.data, scales).to(_compute_dtype(layer)).cpu()
    return None


def _compute_dtype(layer: torch.nn.Module) -> torch.dtype:
    quant_state = getattr(layer.weight, "quant_state", None)
    return getattr(quant_state, "dtype", None) or getattr(layer, "compute_dtype", None) or torch.float32


__all__ = [
    "LoraArgs",
    "QuantizationArgs",
    "apply_lora",
    "is_lora",
    "keep_cpu_4bit_trainable",
    "load_quantized_model",
    "merged_state_dict",
    "reference_policy",
]
