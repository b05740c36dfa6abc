"""Exporting the trained policy as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import lightning as L
    from transformers import PreTrainedTokenizerBase


def resolve_export_dir(trainer: L.Trainer, export_dir: str | None) -> Path | None:
    """'auto' means ``<log_dir>/hf_model`` (next to the metrics); None disables the export."""
    if export_dir is None:
        return None
    if export_dir == "auto":
        return Path(trainer.log_dir or trainer.default_root_dir) / "hf_model"
    return Path(export_dir)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full, unsharded state dict on CPU (gathers FSDP2 shards; a collective: call it on every rank)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_policy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, target: Path, rank: int = 0) -> Path:
    """Write the policy ``model`` and its tokenizer to ``target`` as a plain Hugging Face model folder.

    A LoRA policy is written with its adapters merged into the base weights (4-bit / 8-bit bases dequantized), so
    loading it needs neither peft nor bitsandbytes; the adapter alone goes to ``target/adapter`` as a peft folder.
    Under FSDP2 the shards are gathered first; every rank must call this (``rank``: its global rank; rank 0 writes).
    """
    from urpo.lora import is_lora

    state = full_state_dict(model)
    if rank == 0:
        target.mkdir(parents=True, exist_ok=True)
        if is_lora(model):
            _save_merged(model, state, target)
            model.save_pretrained(target / "adapter", state_dict=state)  # peft keeps only the adapter entries
        else:
            model.save_pretrained(target, state_dict=state)
        tokenizer.save_pretrained(target)
        print(f"urpo: exported the trained model to {target}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return target


def _save_merged(model: torch.nn.Module, state: dict[str, torch.Tensor], target: Path) -> None:
    import copy

    from transformers import AutoModelForCausalLM

    from urpo.lora import merged_state_dict

    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the merged weights are plain floating-point tensors
    # An empty skeleton of the base architecture: save_pretrained writes the given state dict, config and sharding.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    skeleton.generation_config = base.generation_config
    skeleton.save_pretrained(target, state_dict=merged_state_dict(model, state))
