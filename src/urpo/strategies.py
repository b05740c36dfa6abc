"""FSDP2 for URPO: a Lightning strategy preset and the sharding it applies to the policy.

``FSDP2Strategy`` is Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` with its mesh fixed to
pure data parallelism (every rank holds a shard of every layer) and the FSDP2 settings as typed arguments, so YAML
can name it::

    trainer:
      strategy:
        class_path: urpo.strategies.FSDP2Strategy
        init_args: {param_dtype: bfloat16, reduce_dtype: float32, activation_checkpointing: true}

The strategy does not shard anything itself: Lightning hands its device mesh to ``URPOModule.configure_model``, which
calls :func:`shard_model` on the policy (and on the frozen reference). Any ``ModelParallelStrategy`` works the same
way with the default :class:`FSDPSettings`. It runs on CPU with gloo as well (Lightning picks gloo for CPU devices and
NCCL for CUDA), which is how CI tests the same sharded code path that 8 GPUs run; Lightning's ``FSDPStrategy`` (FSDP1)
refuses CPUs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from urpo.args import FloatDType
from urpo.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from urpo.args import SamplingArgs
    from urpo.engines.base import RolloutBatch, RolloutEngine


@dataclass(frozen=True)
class FSDPSettings:
    """How ``fully_shard`` is applied to each decoder layer and to the whole model."""

    param_dtype: FloatDType | None = "bfloat16"
    """Dtype parameters are all-gathered and computed in (None: the stored dtype, i.e. no mixed precision)."""
    reduce_dtype: FloatDType | None = "float32"
    """Dtype gradients are reduce-scattered in; float32 keeps the sum over ranks exact enough."""
    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after its forward (ZeRO-3); False keeps them until backward (ZeRO-2)."""
    cpu_offload: bool = False
    """Keep parameter shards, gradients and optimizer states in CPU memory (CUDA only; slow, for tight memory)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of storing them."""
    unshard_for_generation: bool = True
    """Gather the whole model once per rollout instead of once per generated token (costs one unsharded copy)."""

    def mixed_precision(self) -> Any:
        """The ``MixedPrecisionPolicy`` these settings describe."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=_dtype(self.param_dtype), reduce_dtype=_dtype(self.reduce_dtype))

    def offload(self) -> Any:
        """The ``OffloadPolicy`` these settings describe."""
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        return CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()


def _dtype(name: FloatDType | None) -> torch.dtype | None:
    return getattr(torch, name) if name is not None else None


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (FSDP2) over all devices of all nodes, for ``trainer.strategy`` in YAML.

    Args:
        param_dtype: dtype parameters are gathered and computed in (None: their stored dtype).
        reduce_dtype: dtype gradients are reduced in (None: the parameter dtype).
        reshard_after_forward: free gathered layer parameters after forward (True) or keep them for backward.
        cpu_offload: keep shards, gradients and optimizer states on the CPU (CUDA only).
        activation_checkpointing: recompute decoder-layer activations in backward.
        unshard_for_generation: gather the whole model once per rollout rather than per generated token.
        save_distributed_checkpoint: save checkpoints as DCP folders (one file per rank), or as a single full file.
        process_group_backend: 'nccl', 'gloo', ... (None: NCCL on CUDA, gloo on CPU).
        timeout: how long a collective may wait before the run fails.
    """

    def __init__(
        self,
        param_dtype: FloatDType | None = "bfloat16",
        reduce_dtype: FloatDType | None = "float32",
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        activation_checkpointing: bool = False,
        unshard_for_generation: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.fsdp = FSDPSettings(
            param_dtype=param_dtype,
            reduce_dtype=reduce_dtype,
            reshard_after_forward=reshard_after_forward,
            cpu_offload=cpu_offload,
            activation_checkpointing=activation_checkpointing,
            unshard_for_generation=unshard_for_generation,
        )

    def setup_environment(self) -> None:
        # ModelParallelStrategy's 'auto' means one data-parallel group per node (2D with tensor parallelism within
        # nodes); here every rank of every node shards the model.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def model_to_device(self) -> None:
        # fully_shard already placed every sharded parameter; moving the module again would pull offloaded shards
        # back onto the GPU.
        if not self.fsdp.cpu_offload:
            super().model_to_device()


def release_process_group() -> None:
    """Destroy the default process group, if one is up; call it once a process's training is over.

    A gloo group left for interpreter shutdown can abort the process after its work is done ("terminate called
    without an active exception", exit status -6): its worker threads still hold tensors while Python is torn down.
    Lightning leaves the group up after ``fit`` (a ``test`` may follow), so the process that ends the run closes it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fsdp_settings(strategy: Any) -> FSDPSettings:
    """The FSDP settings of a strategy: its own for :class:`FSDP2Strategy`, the defaults for any other."""
    return getattr(strategy, "fsdp", None) or FSDPSettings()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (decoder layers), innermost first, found through ``_no_split_modules``.

    transformers lists, on every ``PreTrainedModel``, the block classes that must stay whole on one device
    (``Qwen2DecoderLayer``, ``LlamaDecoderLayer``, ...); they are the natural FSDP units. The lookup also works through
    wrappers such as peft's ``PeftModel``, whose inner transformers model carries the list.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"FSDP: found no decoder layers in {type(model).__name__} (no _no_split_modules classes)")
    return layers[::-1]  # fully_shard must wrap inner modules before the modules that contain them


def shard_model(model: torch.nn.Module, mesh: DeviceMesh, settings: FSDPSettings) -> torch.nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to the whole model (which keeps embeddings and head).

    The decoder layers are found by :func:`decoder_layers`; the whole-model unit is the transformers model itself
    (inside a peft wrapper, if any).

    Args:
        model: the policy or the frozen reference; sharded in place.
        mesh: the data-parallel device mesh (Lightning's ``device_mesh["data_parallel"]``, or a 1-D mesh).
        settings: mixed precision, offloading, resharding and activation checkpointing.

    Returns:
        The same module, now an ``FSDPModule`` whose parameters are sharded ``DTensor`` objects.
    """
    from torch.distributed.fsdp import fully_shard

    if _is_quantized(model):
        raise ConfigError("FSDP2 cannot shard a bitsandbytes-quantized model; use QLoRA with one GPU or DDP")
    if settings.activation_checkpointing and model.training:
        _enable_activation_checkpointing(model)
    mesh = data_parallel_mesh(mesh)
    common = {"mesh": mesh, "mp_policy": settings.mixed_precision(), "offload_policy": settings.offload()}
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward, **common)
    fully_shard(_transformers_model(model), **common)
    return model


def _transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    # The root unit goes on the transformers model, not on a peft wrapper around it: PeftModel.generate calls the
    # inner model directly, so hooks on the wrapper would never gather the embeddings during generation. The
    # wrappers hold no parameters of their own.
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_fsdp(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    mesh: DeviceMesh,
    settings: FSDPSettings,
    engine: RolloutEngine | None,
) -> RolloutEngine | None:
    """Shard the policy and the frozen reference (in place) on ``mesh``; returns the rollout engine to use from now
    on: ``engine`` itself, or ``engine`` wrapped to gather the policy for each rollout (``unshard_for_generation``).
    The caller installs it.

    The reference is stored in ``param_dtype``: it is only ever computed in that dtype, so a float32 copy would
    double its memory for nothing.
    """
    shard_model(policy, mesh, settings)
    if reference is not None:
        if settings.param_dtype is not None:
            reference.to(_dtype(settings.param_dtype))
        shard_model(reference, mesh, settings)
    if settings.unshard_for_generation and engine is not None:
        return UnshardedGenerationEngine(engine, lambda: policy, settings)
    return engine


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D data-parallel mesh: the 'data_parallel' dimension of a named 2-D mesh, or the mesh itself."""
    names = mesh.mesh_dim_names or ()
    if mesh.ndim > 1 and "data_parallel" in names:
        tensor_parallel = mesh["tensor_parallel"].size() if "tensor_parallel" in names else 1
        if tensor_parallel != 1:
            raise ConfigError("urpo shards with FSDP2 only: set tensor_parallel_size=1 (or use FSDP2Strategy)")
        return mesh["data_parallel"]
    return mesh


def _enable_activation_checkpointing(model: torch.nn.Module) -> None:
    # transformers checkpoints inside each decoder layer's __call__, which keeps parameter names (and so checkpoints
    # and exports) unchanged; FSDP2 skips its own unshard during the recomputation, since pre-backward already did it.
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "is_gradient_checkpointing", False):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _is_quantized(model: torch.nn.Module) -> bool:
    # Class names, so that checking does not import bitsandbytes.
    return any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())


def is_sharded(model: torch.nn.Module | None) -> bool:
    """Whether any parameter of ``model`` is a sharded ``DTensor``."""
    from torch.distributed.tensor import DTensor

    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def unsharded(model: torch.nn.Module, settings: FSDPSettings) -> Iterator[None]:
    """Keep every FSDP unit of ``model`` gathered inside the block (one all-gather instead of one per forward).

    Generation calls the model once per token; with resharding after each forward, every token would gather the
    whole model again. Afterwards the units are resharded and their ``reshard_after_forward`` restored.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]  # outermost (the root) first
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            # The root keeps FSDP2's own default (False: its parameters are gathered again at once for backward).
            restore = False if unit is units[0] else settings.reshard_after_forward
            unit.set_reshard_after_forward(restore, recurse=False)


class UnshardedGenerationEngine:
    """Wraps a rollout engine so that each ``generate`` call runs on the gathered (unsharded) policy.

    Args:
        engine: the engine that samples from the live policy (e.g. :class:`~urpo.engines.hf_engine.HFGenerateEngine`).
        model: returns the sharded policy.
        settings: the FSDP settings the policy was sharded with.
    """

    def __init__(self, engine: RolloutEngine, model: Any, settings: FSDPSettings) -> None:
        self.engine, self._model, self.settings = engine, model, settings

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        with unsharded(self._model(), self.settings):
            return self.engine.generate(prompts, n, sampling)

    def sync_weights(self) -> None:
        self.engine.sync_weights()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # e.g. the tokenizer or synced_gpus of the wrapped engine


__all__ = [
    "FSDP2Strategy",
    "FSDPSettings",
    "UnshardedGenerationEngine",
    "apply_fsdp",
    "decoder_layers",
    "fsdp_settings",
    "is_sharded",
    "shard_model",
    "unsharded",
]
