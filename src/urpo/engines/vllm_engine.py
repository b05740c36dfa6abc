"""The vLLM rollout engine: a vLLM ``LLM`` in the trainer's own process, fed the policy's weights after each step.

Why in-process: the engine and the policy then share one process and one device, no weights travel between
processes (a push is a copy of tensors, ~0.25 s for a 125M model on CPU), and tests need no process management.
The price is that vLLM touches process-wide state, which this engine contains:

* vLLM reseeds ``random``, ``numpy`` and ``torch`` when it starts, and its sampler draws from torch's global
  generator (on CPU even for seeded requests). The engine keeps its own torch generator state and swaps it in only
  around its own calls, so the trainer's random stream is the same with or without vLLM.
* vLLM patches ``torch.set_num_threads`` into a no-op once it binds threads (CPU build); set threads before.
* Autocast (Lightning's ``bf16-mixed``) is switched off around vLLM calls; vLLM picks its own compute dtype.

Weights are loaded from the policy, never from disk: vLLM starts from a folder holding only the policy's config and
tokenizer with ``load_format="dummy"`` (random weights), and the first ``generate`` pushes the real ones. So hub ids,
local folders, GGUF files and models changed after loading (LoRA, sharding) all work alike. Requires the ``vllm``
extra; see ``docs/rollout.md`` for the CPU and CUDA installs.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from urpo.args import SamplingArgs, VLLMArgs
from urpo.engines.base import FinishReason, RolloutBatch
from urpo.engines.hf_engine import _eos_ids
from urpo.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class VLLMEngine:
    """Samples with vLLM, in this process, from the policy's current weights.

    Args:
        model: returns the policy (a callable, so wrappers added after the engine was built, such as LoRA or FSDP2,
            are what gets pushed).
        tokenizer: the policy's tokenizer; prompts are tokenized and completions decoded with it, exactly as the HF
            engine does, so both engines hand the trainer the same token ids for the same text.
        args: engine options.
        precision: returns the trainer's precision string (e.g. 'bf16-mixed') for ``dtype: auto``; None: unknown.
        rank: returns the global rank, added to the seed.
        seed: seed of the engine's sampling stream (the module passes the run's seed, :func:`urpo.args.run_seed`).
    """

    def __init__(
        self,
        model: Callable[[], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        args: VLLMArgs | None = None,
        precision: Callable[[], str | None] | None = None,
        rank: Callable[[], int] | None = None,
        seed: int = 0,
    ) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.args = args or VLLMArgs()
        self._precision = precision or (lambda: None)
        self._rank = rank or (lambda: 0)
        self.seed = seed
        self.llm: Any = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self._rng_state: dict[str, Any] | None = None
        self._resumed_rng: dict[str, Any] | None = None  # a checkpoint's stream, applied once the engine starts
        self._stale = True
        self.pushes = 0

    # ---- the RolloutEngine protocol -------------------------------------------------------------------------------

    def sync_weights(self) -> None:
        """Mark the engine's weights stale; the push happens at the next ``generate``.

        Deferring makes ``num_iterations`` optimizer steps per rollout cost one push, not several, while the engine
        still never samples from old weights. Every rank calls ``generate`` in the rollout of each step, so under
        FSDP2 the collective gathers of the push stay aligned across ranks.
        """
        self._stale = True

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        """Sample ``n`` completions per prompt; returns token ids, texts, finish reasons and sampled log-probs."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        with _no_autocast():
            if self.llm is None:
                self._start()
            if self._stale:
                self.push_weights()
            prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            params = SamplingParams(**self._sampling_kwargs(n, sampling))
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
            with self._engine_rng():
                outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions, logprobs, reasons = [], [], []
        for request in outputs:  # vLLM returns requests in input order, each with its n samples
            for sample in request.outputs:
                ids = list(sample.token_ids)
                completions.append(ids)
                logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, ids)])
                reasons.append(_finish_reason(sample.finish_reason))
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return RolloutBatch(prompt_ids, completions, texts, reasons, logprobs=logprobs)

    # ---- weights ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def push_weights(self) -> None:
        """Copy the policy's full weights into the engine now, then drop the KV prefix cache computed from old ones.

        The worker's ``reload_weights`` re-runs vLLM's weight processing (the CPU backend repacks linear weights), which
        plain ``load_weights`` does not. ``lm_head.weight`` is sent even for tied embeddings because vLLM's CPU backend
        keeps a separate packed copy of the head.
        """
        if self.llm is None:
            self._start()
            return  # _start pushed
        with _no_autocast(), _merged_adapter(self._model()) as model:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": full_weights(model)})
        # Prompts already in the prefix cache would otherwise reuse keys and values computed with the old weights.
        self.llm.reset_prefix_cache()
        self._stale = False
        self.pushes += 1

    # ---- startup ------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        # In-process only: the weight push hands tensors to the worker directly, which a worker process cannot take.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        model = self._model()
        _check_pushable(model)
        self._folder = tempfile.TemporaryDirectory(prefix="urpo-vllm-")
        _write_config_folder(model, self.tokenizer, self._folder.name)
        kwargs: dict[str, Any] = {
            "model": self._folder.name,
            "load_format": "dummy",  # random init; the real weights are pushed right below
            "dtype": self._resolve_dtype(model),
            "seed": self.seed + self._rank(),
            "enforce_eager": self.args.enforce_eager,
            "kv_cache_memory_bytes": self.args.kv_cache_memory_bytes,
            "gpu_memory_utilization": self.args.gpu_memory_utilization,
            "max_model_len": self.args.max_model_len,
            # A prompt sampled n times (and a referee prompt judged G times) is prefilled once; pushes reset it.
            "enable_prefix_caching": self.args.enable_prefix_caching,
            # Log-probs after temperature (and top-k/p), i.e. of the distribution actually sampled from: the trainer
            # divides its logits by the same temperature, so both sides compare like with like.
            "logprobs_mode": "processed_logprobs",
            "generation_config": "vllm",  # ignore the checkpoint's sampling defaults; SamplingArgs decides
        }
        if self.args.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.args.max_num_seqs
        if self.args.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = self.args.distributed_executor_backend
        kwargs.update(self.args.llm_kwargs)
        with _saved_global_rng():  # vLLM seeds random/numpy/torch globally while it starts
            self.llm = LLM(**kwargs)
            self._rng_state = _rng_snapshot()  # the seeded state becomes the engine's own sampling stream
        if self._resumed_rng is not None:
            self._rng_state.update(self._resumed_rng)
            self._resumed_rng = None
        self.push_weights()

    def _resolve_dtype(self, model: torch.nn.Module) -> str:
        if self.args.dtype != "auto":
            return self.args.dtype
        precision = str(self._precision() or "")
        if precision.startswith("bf16"):
            return "bfloat16"
        if precision.startswith("16"):
            return "float16"
        dtype = next(model.parameters()).dtype
        return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")

    def _sampling_kwargs(self, n: int, sampling: SamplingArgs) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k or 0,  # 0: no top-k in vLLM, as in HF generate
            "max_tokens": sampling.max_new_tokens,
            "logprobs": 0,  # the sampled token's log-prob only
            "stop_token_ids": _eos_ids(self.tokenizer, self._model()),
            "detokenize": False,  # decoded here with the trainer's tokenizer, as the HF engine does
        }
        kwargs.update(self.args.sampling_kwargs)
        return kwargs

    @contextlib.contextmanager
    def _engine_rng(self) -> Iterator[None]:
        """Run vLLM on its own random stream and give the trainer back exactly the state it had."""
        with _saved_global_rng():
            if self._rng_state is not None:
                _rng_restore(self._rng_state)
            try:
                yield
            finally:
                self._rng_state = _rng_snapshot()

    def state_dict(self) -> dict[str, Any]:
        """The engine's own sampling stream (torch, Python and CUDA RNG states) for checkpoints; empty before it
        starts. NumPy's state is left out: vLLM's sampling does not draw from it, and it would not load under
        ``torch.load(weights_only=True)``."""
        if self._rng_state is None:
            return {}
        return {"rng": {k: v for k, v in self._rng_state.items() if k in ("torch", "python", "cuda")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpoint's sampling stream: a resumed run samples what a straight run would have."""
        rng = state.get("rng")
        if rng is None:
            return
        if self._rng_state is None:
            self._resumed_rng = dict(rng)  # not started yet: _start applies it after vLLM's own seeding
        else:
            self._rng_state.update(rng)

    def close(self) -> None:
        """Free the engine (its KV cache and weights) and its config folder."""
        self.llm = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        import gc

        gc.collect()


# ---- helpers ----------------------------------------------------------------------------------------------------


def full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under their checkpoint names, one full tensor at a time.

    ``state_dict`` (not ``named_parameters``) so that tied ``lm_head.weight`` is included. FSDP2 shards (DTensors)
    are gathered with ``full_tensor()`` lazily, one tensor at a time, which bounds the extra memory to the largest
    tensor; every rank runs the same gathers in the same order. A merged PEFT model is seen through its base names.
    """
    peft = hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")
    for name, tensor in model.state_dict().items():
        name = name.replace("_orig_mod.", "")  # torch.compile wrapper
        if peft:
            if "lora_" in name or ".original_module." in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            name = name.replace(".modules_to_save.default.", ".")
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        yield name, tensor.detach()


@contextlib.contextmanager
def _merged_adapter(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Merge LoRA adapters into the base weights for the push, and unmerge afterwards (the trainer needs them apart)."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def _check_pushable(model: torch.nn.Module) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "hf_quantizer", None) is not None:
        raise ConfigError(
            "model.rollout.engine: vllm needs unquantized policy weights to push; a quantized (e.g. 4-bit QLoRA) "
            "policy trains with engine: hf"
        )


def _write_config_folder(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: str) -> None:
    """Write what vLLM needs to build the architecture: the config and the tokenizer, but no weights."""
    import copy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)  # the policy's own config stays untouched
    if not getattr(config, "architectures", None):
        config.architectures = [type(base).__name__]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _finish_reason(reason: str | None) -> FinishReason:
    # vLLM says 'stop' for EOS and stop tokens, 'length' at max_tokens; anything else (abort) counts as truncated.
    return "stop" if reason == "stop" else "length"


def _rng_snapshot() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    with contextlib.suppress(ImportError):
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _saved_global_rng() -> Iterator[None]:
    saved = _rng_snapshot()
    try:
        yield
    finally:
        _rng_restore(saved)


@contextlib.contextmanager
def _no_autocast() -> Iterator[None]:
    """Leave any autocast region the trainer opened (Lightning's mixed precision): vLLM sets its own dtype."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


__all__ = ["VLLMArgs", "VLLMEngine", "full_weights"]
