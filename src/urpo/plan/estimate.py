"""Memory of one URPO step per rank, from the model's shapes and the run's settings: pure arithmetic.

The step's lengths come from :func:`urpo.plan.shapes.shapes`; the time from :mod:`urpo.plan.step_time`.

A step's memory is planned over phases that never overlap, named as the step's timers name them (``urpo.timing``):
``rollout`` (the player's generation), ``judge`` (the self-judge's generation), ``update`` (forward and backward of
one micro-batch at a time) and the update's optimizer step. Some memory lives through all of them
(weights, optimizer states, the reference policy, a vLLM engine); the rest belongs to one phase. The peak of a rank is
the largest phase total. Every term is an upper bound for sequences of the configured lengths: prompts of
``data.max_prompt_tokens`` and completions of ``sampling.max_new_tokens`` (real prompts are shorter).

Activation bytes per token of one decoder layer (Llama/Qwen block, SDPA attention, no dropout) count what autograd
saves for backward: the two RMSNorms keep an fp32 copy of their input and of the normalised value plus two
compute-dtype tensors (24 h bytes together); attention keeps q, k and v (k and v repeated to all heads when a padding
mask is passed), its output and the o_proj input (5 h); the SwiGLU MLP keeps gate, silu(gate), up and their
product (4 i). Gradient checkpointing keeps one residual-stream tensor (h) per layer and recomputes one layer at a
time. Logits of a micro-batch are fp32 ``[completion tokens, vocab]`` for at most ``grpo.logits_chunk_tokens`` tokens
at once (the update applies the head in chunks, recomputed in backward), with up to five copies of a chunk alive at
once (the logits, the entropy metric's log-softmax and softmax in forward; logsumexp's and gather's gradients and
their sum in backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urpo.plan.architecture import ModelFacts
from urpo.plan.setup import RunSetup
from urpo.plan.shapes import Shapes, shapes

GB = 1e9
PHASES = ("rollout", "judge", "update", "update: optimizer step")
ALL = frozenset(PHASES)
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
LOGIT_COPIES = 5
"""fp32 copies of a micro-batch's completion logits alive at once (measured on CPU: 4 in backward, 5 while the
entropy metric's log-softmax and softmax exist next to the logits saved for backward)."""


@dataclass(frozen=True)
class Term:
    """One line of the plan: bytes per rank, the arithmetic behind them, and the phases they are alive in."""

    name: str
    bytes: float
    arithmetic: str
    phases: frozenset[str] = ALL


@dataclass
class MemoryPlan:
    """The terms of one rank and their phase totals."""

    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    def phase_total(self, phase: str) -> float:
        return sum(t.bytes for t in self.terms if phase in t.phases)

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_total)

    @property
    def peak(self) -> float:
        return self.phase_total(self.peak_phase)

    def term(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.name == name), None)


def dtype_bytes(name: str | None, default: int = 4) -> int:
    return DTYPE_BYTES.get(str(name).removeprefix("torch."), default) if name is not None else default


# ---- dtypes of the run ------------------------------------------------------------------------------------------


def half_precision(setup: RunSetup) -> bool:
    """Whether Lightning runs the model in 16 bits (autocast '-mixed' or converted '-true')."""
    return setup.precision.startswith(("bf16", "16"))


def weight_bytes(setup: RunSetup, facts: ModelFacts) -> int:
    """Bytes of one stored (master) weight."""
    if setup.precision in ("bf16-true", "16-true", "bf16", "16"):
        return 2
    name = facts.stored_dtype if setup.model.dtype == "auto" else setup.model.dtype
    return dtype_bytes(name)


def compute_bytes(setup: RunSetup, facts: ModelFacts) -> int:
    """Bytes of one activation element: FSDP2's param_dtype, else 2 under 16-bit precision, else the weights'."""
    if setup.fsdp is not None and setup.fsdp.param_dtype is not None:
        return dtype_bytes(setup.fsdp.param_dtype)
    if half_precision(setup):
        return 2
    return 4 if setup.quantization is not None else weight_bytes(setup, facts)


def residual_bytes(setup: RunSetup, facts: ModelFacts) -> int:
    """Bytes of the residual stream: fp32 under autocast (fp32 embeddings plus bf16 branch outputs), else compute."""
    if setup.precision.endswith("-mixed") and setup.fsdp is None:
        return max(weight_bytes(setup, facts), 2)
    return compute_bytes(setup, facts)


def trainable_params(setup: RunSetup, facts: ModelFacts) -> int:
    if setup.lora is None:
        return facts.params
    return facts.lora_params(setup.lora.r, list(setup.lora.target_modules))


def trainable_bytes(setup: RunSetup, facts: ModelFacts) -> int:
    """Bytes of one trainable weight (peft keeps adapters in fp32 unless the whole model is converted to 16 bits)."""
    if setup.lora is None:
        return weight_bytes(setup, facts)
    return 2 if setup.precision in ("bf16-true", "16-true") else 4


def optimizer_state_bytes(setup: RunSetup, param_bytes: int) -> tuple[float, str]:
    """Bytes of optimizer state per trainable parameter, and what that assumes."""
    name = setup.optimizer.rsplit(".", 1)[-1].lower()
    if "8bit" in name:
        return 2.0, f"{setup.optimizer}: two 8-bit states"
    if name.startswith("sgd"):
        momentum = float(setup.optimizer_args.get("momentum", 0) or 0)
        state = "one momentum buffer" if momentum else "no state"
        return (param_bytes if momentum else 0.0), f"{setup.optimizer}: {state}"
    if name.startswith(("adagrad", "rmsprop", "lion")):
        return float(param_bytes), f"{setup.optimizer}: one state"
    if name.startswith("adafactor"):
        return 0.05 * param_bytes, f"{setup.optimizer}: factored second moments (~0)"
    known = name.startswith(("adam", "nadam", "radam", "lamb", "pagedadam"))
    return 2.0 * param_bytes, f"{setup.optimizer}: two states{'' if known else ' (assumed, like AdamW)'}"


# ---- the memory plan --------------------------------------------------------------------------------------------


CPU_WORKSPACE_BYTES = 25e6
"""A per-process constant of a CPU training run that no tensor accounts for: the tiny calibration cases measured
25-30 MB above their live tensors; at 100 M parameters it is lost in the noise. On a GPU the runtime reserve (CUDA
context, allocator) plays this part."""


def memory_plan(setup: RunSetup, facts: ModelFacts, cuda: bool = True) -> MemoryPlan:
    """Bytes per rank of every term of a step under ``setup`` (``cuda``: the optimizer runs foreach kernels)."""
    terms: list[Term] = []
    notes = list(setup.notes)
    terms += _state_terms(setup, facts, notes, cuda)
    terms += _engine_terms(setup, facts, notes)
    terms += _update_terms(setup, facts)
    if not cuda:
        terms.append(
            Term(
                "CPU kernel workspaces",
                CPU_WORKSPACE_BYTES,
                "measured: thread pools and kernel scratch "
                "that appear with the first forward and backward (tools/plan_calibration.py)",
            )
        )
    return MemoryPlan([t for t in terms if t.bytes > 0 or t.name.startswith("reference")], notes)


def _state_terms(setup: RunSetup, facts: ModelFacts, notes: list[str], cuda: bool) -> list[Term]:
    shards, wb = setup.shards, weight_bytes(setup, facts)
    per = f" / {shards} ranks" if shards > 1 else ""
    train_n, tb = trainable_params(setup, facts), trainable_bytes(setup, facts)
    terms = []
    if setup.lora is None:
        terms.append(Term("weights", facts.params * wb / shards, f"{_n(facts.params)} x {wb} B{per}"))
    elif setup.quantization is not None:
        bits = setup.quantization.bits
        constants = 0.127 if setup.quantization.double_quant else 0.5  # bits a weight: QLoRA, arXiv 2305.14314
        quant = facts.layer_linear_params * (bits + (constants if bits == 4 else 0.25)) / 8
        rest = facts.params - facts.layer_linear_params
        terms.append(
            Term(
                "weights (frozen base)",
                (quant + rest * 4) / shards,
                f"{_n(facts.layer_linear_params)} linear weights in {bits} bits + {_n(rest)} others in fp32 "
                "(prepare_model_for_kbit_training upcasts them)",
            )
        )
    else:
        terms.append(Term("weights (frozen base)", facts.params * wb / shards, f"{_n(facts.params)} x {wb} B{per}"))
    if setup.lora is not None:
        terms.append(Term("LoRA adapters", train_n * tb / shards, f"r={setup.lora.r}: {_n(train_n)} x {tb} B{per}"))
    grad_copies = 2 if setup.strategy == "ddp" else 1
    terms.append(
        Term(
            "gradients",
            grad_copies * train_n * tb / shards,
            f"{_n(train_n)} x {tb} B{per}" + (" x 2 (DDP's bucket copy)" if grad_copies == 2 else ""),
            frozenset({"update", "update: optimizer step"}),
        )
    )
    state, why = optimizer_state_bytes(setup, tb)
    terms.append(Term("optimizer states", train_n * state / shards, f"{why}: {_n(train_n)} x {state:g} B{per}"))
    step_temp = train_n * tb / shards if cuda and "8bit" not in setup.optimizer.lower() else 0.0
    terms.append(
        Term(
            "optimizer step temporaries",
            step_temp,
            "foreach kernels: one state-sized buffer (CUDA)",
            frozenset({"update: optimizer step"}),
        )
    )
    terms.append(_reference(setup, facts))
    return terms


def _reference(setup: RunSetup, facts: ModelFacts) -> Term:
    if setup.grpo.beta == 0:
        return Term("reference policy", 0.0, "beta = 0: not loaded")
    if setup.lora is not None:
        return Term("reference policy", 0.0, "LoRA: the base with adapters off, no copy")
    if setup.fsdp is not None and setup.fsdp.param_dtype is not None:
        b = dtype_bytes(setup.fsdp.param_dtype)
        return Term(
            "reference policy",
            facts.params * b / setup.shards,
            f"frozen copy in {setup.fsdp.param_dtype}: {_n(facts.params)} x {b} B / {setup.shards} ranks",
        )
    wb = weight_bytes(setup, facts)
    return Term("reference policy", facts.params * wb, f"frozen copy: {_n(facts.params)} x {wb} B")


def _engine_terms(setup: RunSetup, facts: ModelFacts, notes: list[str]) -> list[Term]:
    s, gen_b = shapes(setup), compute_bytes(setup, facts)
    kv_token = 2 * facts.num_layers * facts.kv_heads * facts.head_dim * gen_b
    player, referee = frozenset({"rollout"}), frozenset({"judge"})
    rollout = player | referee
    terms = []
    if setup.fsdp is not None:
        gathered = facts.params if setup.fsdp.unshard_for_generation else 2 * facts.layer_params + facts.root_params
        what = "the whole model" if setup.fsdp.unshard_for_generation else "root unit + 2 layers at a time"
        terms.append(Term("model gathered for generation", gathered * gen_b, f"{what} x {gen_b} B", rollout))
    if setup.engine == "vllm":
        engine_b = dtype_bytes(setup.vllm.dtype, gen_b) if setup.vllm.dtype != "auto" else gen_b
        terms.append(Term("vLLM engine weights", facts.params * engine_b, f"{_n(facts.params)} x {engine_b} B"))
        if setup.vllm.kv_cache_memory_bytes is not None:
            kv = float(setup.vllm.kv_cache_memory_bytes)
            terms.append(Term("vLLM KV cache", kv, f"rollout.vllm.kv_cache_memory_bytes ({kv / kv_token:,.0f} tokens)"))
        else:
            notes.append(
                f"vLLM takes gpu_memory_utilization = {setup.vllm.gpu_memory_utilization} of the device "
                "for its weights and KV cache (shown against the device's memory)"
            )
        return terms
    terms.append(_generation("player", s.player_call, s.prompt, s.completion, kv_token, gen_b, facts, player))
    if s.judge_prompts:
        terms.append(
            _generation("referee", s.judge_call, s.judge_prompt, s.judge_completion, kv_token, gen_b, facts, referee)
        )
    return terms


def _generation(
    who: str, call: int, prompt: int, new: int, kv_token: int, b: int, facts: ModelFacts, phases: frozenset[str]
) -> Term:
    kv = call * (prompt + new) * kv_token
    # Prefill of one layer at a time: q, k, v and attention output (~4 h) and the MLP's gate, up and product (3 i).
    prefill = call * prompt * (4 * facts.hidden + 3 * facts.intermediate) * b
    logits = call * facts.vocab * (b + 2 * 4)  # last position only, then fp32 scores and probabilities
    return Term(
        f"generation: {who}",
        kv + prefill + logits,
        f"KV cache {call} seq x {prompt + new} tok x {kv_token / 1e3:.1f} KB = {kv / GB:.2f} GB "
        f"+ prefill {call} x {prompt} tok = {prefill / GB:.2f} GB",
        phases,
    )


def layer_activation_bytes(facts: ModelFacts, compute_b: int) -> int:
    """Bytes autograd saves per token in one decoder layer (see the module docstring)."""
    return 24 * facts.hidden + compute_b * (5 * facts.hidden + 4 * facts.intermediate)


def activation_bytes(setup: RunSetup, facts: ModelFacts, checkpointing: bool) -> float:
    """Peak activation bytes of one micro-batch's forward and backward."""
    s, b = shapes(setup), compute_bytes(setup, facts)
    tokens, per_layer = s.micro_tokens, layer_activation_bytes(facts, b)
    backward = tokens * b * 2 * (facts.hidden + facts.intermediate)  # gradients flowing through one layer
    if checkpointing:
        stored = facts.num_layers * tokens * facts.hidden * residual_bytes(setup, facts) + tokens * per_layer
    else:
        stored = facts.num_layers * tokens * per_layer
    if s.micro_prompts:  # the prompts' keys and values gathered to every row, and repeated to all heads
        stored += facts.num_layers * s.micro_sequences * s.prompt * 4 * facts.hidden * b
    return stored + backward


def _micro_batch_text(s: Shapes) -> str:
    if s.micro_prompts:
        return f"{s.micro_prompts} prompts x {s.prompt} + {s.micro_sequences} completions x {s.completion} tok"
    return f"{s.micro_sequences} seq x {s.sequence} tok"


def _update_terms(setup: RunSetup, facts: ModelFacts) -> list[Term]:
    s, b = shapes(setup), compute_bytes(setup, facts)
    update = frozenset({"update"})
    terms = []
    if setup.fsdp is not None:
        rb = dtype_bytes(setup.fsdp.reduce_dtype, b)
        grad_b = (b + rb) if setup.lora is None else 0
        layers = 2 if setup.fsdp.reshard_after_forward else facts.num_layers
        gathered = facts.root_params * (b + grad_b) + layers * facts.layer_params * b + 2 * facts.layer_params * grad_b
        terms.append(
            Term(
                "FSDP2 gathered units",
                gathered,
                f"root unit + {layers} layers in {b} B" + (f", their gradients in {b}+{rb} B" if grad_b else ""),
                update,
            )
        )
    elif setup.precision.endswith("-mixed") and setup.lora is None:
        copies = (
            facts.layer_linear_params + facts.head_params + (facts.embedding_params if facts.head_params == 0 else 0)
        )
        terms.append(
            Term("autocast weight copies", copies * 2, f"16-bit copies of {_n(copies)} matmul weights", update)
        )
    used = activation_bytes(setup, facts, setup.checkpointing)
    other = activation_bytes(setup, facts, not setup.checkpointing)
    terms.append(
        Term(
            "activations, one micro-batch",
            used,
            f"{_micro_batch_text(s)}, {'with' if setup.checkpointing else 'without'} gradient "
            f"checkpointing ({'without' if setup.checkpointing else 'with'}: {other / GB:.2f} GB)",
            update,
        )
    )
    completion = s.micro_sequences * s.completion
    chunk = setup.grpo.logits_chunk_tokens
    at_once = min(completion, chunk) if chunk else completion  # grpo.logits_chunk_tokens: the head runs in chunks
    logits = LOGIT_COPIES * at_once * facts.vocab * 4
    if b != 4:
        logits += at_once * facts.vocab * b
    how = f"chunks of {at_once} of {completion}" if at_once < completion else f"{completion}"
    terms.append(
        Term(
            "logits, one micro-batch",
            logits,
            f"{how} completion tok x {facts.vocab} x 4 B x {LOGIT_COPIES} copies",
            update,
        )
    )
    return terms


# ---- time ---------------------------------------------------------------------------------------------------------


def _n(count: float) -> str:
    """A parameter count for people: 7.62 B, 36.9 M, 115 k."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.0f}"
