"""Time of a planned step per rank: its FLOPs at a stated throughput, and the floor of decoding at a stated memory
bandwidth (pure arithmetic over :func:`urpo.plan.shapes.shapes`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from urpo.plan.architecture import ModelFacts
from urpo.plan.estimate import GB, compute_bytes
from urpo.plan.setup import RunSetup
from urpo.plan.shapes import shapes


@dataclass(frozen=True)
class StepTime:
    """FLOPs of one rank's step and the seconds they take at a stated throughput."""

    train_flops: float
    generate_flops: float
    seconds_train: float
    seconds_generate: float
    decode_seconds_floor: float | None
    """Generation can not be faster than reading the weights once per decoded token (needs a bandwidth)."""


def step_time(setup: RunSetup, facts: ModelFacts, tflops: float, bandwidth_gbs: float | None = None) -> StepTime:
    """6·N·tokens per training pass (4·N with LoRA: no weight gradients of the base), 2·N per extra forward
    (recomputation, old log-probs, reference) and 2·N·tokens for generation; attention FLOPs are left out.

    Generation counts each prompt prefill the engine runs (:func:`urpo.plan.shapes.player_prefills`): shared, a
    prompt's cache holds all but its last token once, and each sequence runs that last token itself."""
    s, n = shapes(setup), facts.params
    tokens = s.player_sequences * s.sequence
    # With the shared-prefix update each of the batch's prompts is trained on once, not G times.
    trained = s.player_sequences * s.completion + setup.batch_size * s.prompt if s.micro_prompts else tokens
    per_pass = (4 if setup.lora is not None else 6) + (2 if setup.checkpointing else 0)
    train = per_pass * n * trained * setup.grpo.num_iterations
    train += 2 * n * trained * ((setup.grpo.num_iterations > 1) + (setup.grpo.beta > 0))
    prefilled = s.player_prefills * (s.prompt - 1) + s.player_sequences  # the player's prompt tokens computed
    generated = prefilled + s.player_sequences * s.completion
    generate = 2 * n * (generated + s.judge_prompts * (s.judge_prompt + s.judge_completion))
    floor = None
    if bandwidth_gbs:
        calls_player = math.ceil(s.player_sequences / max(s.player_call, 1))
        calls_judge = math.ceil(s.judge_prompts / max(s.judge_call, 1)) if s.judge_prompts else 0
        steps = calls_player * s.completion + calls_judge * s.judge_completion
        floor = steps * n * compute_bytes(setup, facts) / (bandwidth_gbs * GB)
    rate = tflops * 1e12
    return StepTime(train, generate, train / rate, generate / rate, floor)
