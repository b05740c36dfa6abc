"""Exporting the trained policy as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import lightning as L

    from urpo.module import URPOModule


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


def export_policy(module: URPOModule, target: Path) -> Path:
    """Write the policy (LoRA adapters merged into the base weights) and the tokenizer to ``target``."""
    model = module.policy
    state = full_state_dict(model)
    if module.global_rank == 0:
        target.mkdir(parents=True, exist_ok=True)
        exportable = _merged_copy_if_lora(model, state)
        if exportable is model:
            model.save_pretrained(target, state_dict=state)
        else:
            exportable.save_pretrained(target)
        module.tokenizer.save_pretrained(target)
        module.print(f"urpo: exported the trained model to {target}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return target


def _merged_copy_if_lora(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    if not hasattr(model, "merge_and_unload"):
        return model
    import copy

    merged = copy.deepcopy(model)
    merged.load_state_dict(state)
    return merged.merge_and_unload()
