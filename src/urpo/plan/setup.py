"""What a memory plan needs from a ``urpo fit`` config, read from the same YAML without building anything.

The YAML is the one ``urpo fit --config`` takes; each section is turned into the same typed argument classes the
module uses (:mod:`urpo.args`), so their defaults and checks apply. Nothing is instantiated that would load a
tokenizer, a model or a dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from urpo.args import GRPOArgs, LoraArgs, ModelArgs, PolicyArgs, QuantizationArgs, RolloutArgs, SamplingArgs, VLLMArgs
from urpo.config_files import check_renamed_keys
from urpo.errors import ConfigError
from urpo.strategies import FSDPSettings

DEFAULT_PROMPT_TOKENS = 1024
"""Prompt length assumed when ``data.max_prompt_tokens`` is unset (the report says so)."""


@dataclass(frozen=True)
class JudgeSetup:
    """The self-judge's generation: the longest prompts of a step (``SelfJudge`` in ``model.rewards``)."""

    max_prompt_tokens: int | None = 4096
    max_new_tokens: int | None = None
    judgments_per_group: int = 2
    chunk_size: int | None = None


@dataclass(frozen=True)
class RunSetup:
    """Every setting of a run that moves its memory or its time, with urpo's defaults filled in."""

    model: ModelArgs
    grpo: GRPOArgs = GRPOArgs()
    sampling: SamplingArgs = SamplingArgs()
    lora: LoraArgs | None = None
    quantization: QuantizationArgs | None = None
    engine: str = "hf"
    vllm: VLLMArgs = VLLMArgs()
    gradient_checkpointing: bool = False
    optimizer: str = "torch.optim.AdamW"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    judge: JudgeSetup | None = None
    batch_size: int = 8
    max_prompt_tokens: int | None = None
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "single"
    """'single', 'ddp' or 'fsdp2' (FSDP2Strategy, ModelParallelStrategy and Lightning's 'fsdp' shard alike)."""
    fsdp: FSDPSettings | None = None
    precision: str = "32-true"
    notes: tuple[str, ...] = ()
    """Assumptions the plan had to make (shown under the table)."""

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def shards(self) -> int:
        """How many ways parameters, gradients and optimizer states are split."""
        return self.world_size if self.strategy == "fsdp2" else 1

    @property
    def checkpointing(self) -> bool:
        return self.gradient_checkpointing or bool(self.fsdp and self.fsdp.activation_checkpointing)

    @property
    def prompt_tokens(self) -> int:
        return self.max_prompt_tokens or DEFAULT_PROMPT_TOKENS

    def replace(self, **changes: Any) -> RunSetup:
        return dataclasses.replace(self, **changes)


def read_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML of ``path`` with ``--a.b.c value`` overrides applied (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a mapping (trainer:, model:, data:)")
    check_renamed_keys(config, str(path))
    items = list(overrides or [])
    if len(items) % 2:
        raise ConfigError(f"override {items[-1]!r} has no value (use --section.key VALUE)")
    for key, value in zip(items[::2], items[1::2]):
        if not key.startswith("--"):
            raise ConfigError(f"expected an option like --model.grpo.beta, got {key!r}")
        _set_path(config, key[2:].split("."), yaml.safe_load(value))
    check_renamed_keys(config, f"{path} with overrides")
    return config


def _set_path(config: dict[str, Any], keys: list[str], value: Any) -> None:
    node = config
    for key in keys[:-1]:
        if key == "init_args" and "init_args" not in node:
            node["init_args"] = {}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def run_setup(config: dict[str, Any], source: str = "config") -> RunSetup:
    """Turn a ``urpo fit`` config (as a dict) into a :class:`RunSetup`."""
    model = config.get("model") or {}
    trainer = config.get("trainer") or {}
    data = config.get("data") or {}
    notes: list[str] = []
    check_renamed_keys(config, source)
    policy_section = model.get("policy")
    if not isinstance(policy_section, dict) or "name_or_path" not in policy_section:
        raise ConfigError(f"{source} has no model.policy.name_or_path (the model to plan for)")
    strategy, fsdp = _strategy(trainer.get("strategy", "auto"), notes)
    devices = _devices(trainer.get("devices", "auto"), trainer.get("accelerator", "auto"), notes)
    optimizer = model.get("optimizer") or {}
    optimizer_class = (
        optimizer.get("class_path", "torch.optim.AdamW") if isinstance(optimizer, dict) else str(optimizer)
    )
    try:
        policy = _policy(policy_section)
        rollout = dict(model.get("rollout") or {})
        rollout = RolloutArgs(engine=rollout.get("engine", "hf"), vllm=VLLMArgs(**(rollout.get("vllm") or {})))
        setup = RunSetup(
            model=_loading_args(policy),
            grpo=GRPOArgs(**(model.get("grpo") or {})),
            sampling=SamplingArgs(**(model.get("sampling") or {})),
            lora=policy.lora,
            quantization=policy.quantization,
            engine=rollout.engine,
            vllm=rollout.vllm,
            gradient_checkpointing=policy.gradient_checkpointing,
            optimizer=optimizer_class,
            optimizer_args=dict(optimizer.get("init_args") or {}) if isinstance(optimizer, dict) else {},
            judge=_judge(model.get("rewards") or []),
            batch_size=int(data.get("batch_size", 8)),
            max_prompt_tokens=data.get("max_prompt_tokens"),
            accelerator=str(trainer.get("accelerator", "auto")),
            devices=devices,
            num_nodes=int(trainer.get("num_nodes", 1)),
            strategy="single" if strategy == "ddp" and devices * int(trainer.get("num_nodes", 1)) == 1 else strategy,
            fsdp=fsdp,
            precision=str(trainer.get("precision", "32-true")),
        )
    except (TypeError, ValueError) as err:  # an unknown key or a bad value in one of the sections
        raise ConfigError(f"{source}: {err}") from None
    if setup.max_prompt_tokens is None:
        notes.append(f"data.max_prompt_tokens is unset: prompts assumed to be {DEFAULT_PROMPT_TOKENS} tokens")
    return setup.replace(notes=tuple(notes))


def _policy(section: dict[str, Any]) -> PolicyArgs:
    """``model.policy`` as the module reads it, its LoRA and quantization sections included."""
    section = dict(section)
    lora, quantization = section.pop("lora", None), section.pop("quantization", None)
    return PolicyArgs(
        **section,
        lora=LoraArgs(**lora) if lora is not None else None,
        quantization=QuantizationArgs(**quantization) if quantization is not None else None,
    )


def _loading_args(policy: PolicyArgs) -> ModelArgs:
    """The :class:`ModelArgs` part of the policy (where and how it loads); what trains is kept in RunSetup's fields."""
    return ModelArgs(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(ModelArgs)})


def _judge(rewards: list[Any]) -> JudgeSetup | None:
    for reward in rewards:
        path = reward.get("class_path", "") if isinstance(reward, dict) else str(reward)
        if path.rsplit(".", 1)[-1] == "SelfJudge":
            args = reward.get("init_args") or {} if isinstance(reward, dict) else {}
            known = {f.name for f in dataclasses.fields(JudgeSetup)}
            return JudgeSetup(**{k: v for k, v in args.items() if k in known})
    return None


def _strategy(spec: Any, notes: list[str]) -> tuple[str, FSDPSettings | None]:
    if isinstance(spec, dict):
        name = str(spec.get("class_path", "")).rsplit(".", 1)[-1]
        args = spec.get("init_args") or {}
        if name in ("FSDP2Strategy", "ModelParallelStrategy"):
            known = {f.name for f in dataclasses.fields(FSDPSettings)}
            return "fsdp2", FSDPSettings(**{k: v for k, v in args.items() if k in known})
        if name in ("FSDPStrategy",):
            return "fsdp2", FSDPSettings()
        spec = name
    text = str(spec).lower()
    if text.startswith("fsdp"):
        notes.append(f"strategy {spec!r} is planned as FSDP2 with default settings")
        return "fsdp2", FSDPSettings()
    if text not in ("auto", "ddp", "single_device", "ddpstrategy", "singledevicestrategy") and not text.startswith(
        "ddp"
    ):
        notes.append(f"strategy {spec!r} is planned as DDP (every rank holds the whole model)")
    return "ddp", None


def _devices(spec: Any, accelerator: Any, notes: list[str]) -> int:
    if isinstance(spec, list):
        return len(spec)
    if isinstance(spec, int) and spec > 0:
        return spec
    if isinstance(spec, str) and spec.isdigit() and int(spec) > 0:
        return int(spec)
    import torch

    count = torch.cuda.device_count() if str(accelerator) in ("gpu", "cuda", "auto") else 0
    notes.append(f"trainer.devices is {spec!r}: planned for {max(count, 1)} device(s)")
    return max(count, 1)
