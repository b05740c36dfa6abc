"""The lengths of one rank's URPO step: sequences per micro-batch, per engine call and per judging prompt.

Pure arithmetic over a :class:`~urpo.plan.setup.RunSetup`, shared by the memory plan (:mod:`urpo.plan.estimate`)
and the step-time estimate (:mod:`urpo.plan.step_time`). Lengths are upper bounds: prompts of
``data.max_prompt_tokens`` and completions of ``sampling.max_new_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from urpo.plan.setup import RunSetup


@dataclass(frozen=True)
class Shapes:
    """Sequence counts and lengths of one rank's step."""

    prompt: int
    completion: int
    micro_sequences: int
    """Sequences of prompt + completion length in one micro-batch (at least one)."""
    player_sequences: int
    player_call: int
    """Sequences generated at once by the player's rollout (``sampling.max_batch_size`` bounds it)."""
    judge_prompts: int
    judge_prompt: int
    judge_completion: int
    judge_call: int

    @property
    def sequence(self) -> int:
        return self.prompt + self.completion

    micro_prompts: int = 0
    """Distinct prompts a micro-batch runs with the shared-prefix update (0: it runs every sequence whole)."""
    player_prefills: int = 0
    """Prompts the player's rollout prefills: one per sequence, or one per distinct prompt of each engine call when
    the engine shares them (:func:`player_prefills`)."""

    @property
    def micro_tokens(self) -> int:
        """Token positions one micro-batch's forward runs."""
        if self.micro_prompts:
            return self.micro_prompts * self.prompt + self.micro_sequences * self.completion
        return self.micro_sequences * self.sequence


def shared_prefix_runs(setup: RunSetup) -> bool:
    """Whether the update runs each distinct prompt once (urpo.shared_prefix): on, unless activation checkpointing,
    which drops the KV cache of training forwards, makes it run plain."""
    return setup.grpo.shared_prefix and not setup.checkpointing


def _micro_batch_shape(setup: RunSetup, prompt: int, completion: int) -> tuple[int, int]:
    """Sequences and distinct prompts (0: not shared) of a full micro-batch under the token budget; shared, its
    sequences come G to a prompt, so m sequences run ceil(m / G) prompts."""
    budget, g = setup.grpo.max_tokens_per_micro_batch, setup.grpo.num_generations
    if not shared_prefix_runs(setup):
        return max(1, budget // (prompt + completion)), 0
    micro = min(max(1, budget // max(1, prompt // g + completion)), setup.batch_size * g)  # no more than the step's
    while micro > 1 and math.ceil(micro / g) * prompt + micro * completion > budget:
        micro -= 1
    return micro, math.ceil(micro / g)


def player_prefills(setup: RunSetup, sequences: int, call: int) -> int:
    """Prompt prefills of the player's rollout of ``sequences`` sequences, ``call`` at a time.

    The HF engine with ``sampling.shared_prefill`` runs each distinct prompt of a call once (its G copies sit together
    in the engine's list, so a group split between two calls is prefilled in both); vLLM with
    ``enable_prefix_caching`` computes each prompt's blocks once for the whole step. Otherwise every sequence
    prefills its prompt. Judging prompts are all distinct (one sample each), so sharing saves nothing there."""
    g = setup.grpo.num_generations
    if setup.engine == "vllm":
        return math.ceil(sequences / g) if setup.vllm.enable_prefix_caching else sequences
    if not setup.sampling.shared_prefill:
        return sequences
    calls = range(0, sequences, max(call, 1))
    return sum((min(start + call, sequences) - 1) // g - start // g + 1 for start in calls)


def shapes(setup: RunSetup) -> Shapes:
    """The lengths of one rank's step under ``setup``; judging lengths are the worst case (every row open)."""
    prompt, completion = setup.prompt_tokens, setup.sampling.max_new_tokens
    g = setup.grpo.num_generations
    micro, micro_prompts = _micro_batch_shape(setup, prompt, completion)
    players = setup.batch_size * g
    cap = setup.sampling.max_batch_size or players
    call = min(players, cap)
    prefills = player_prefills(setup, players, call)
    judge = setup.judge
    if judge is None:
        return Shapes(prompt, completion, micro, players, call, 0, 0, 0, 0, micro_prompts, prefills)
    # SelfJudge halves the answers shown per prompt until the prompt fits its budget (never below 2).
    per_chunk = min(judge.chunk_size or g, g)
    while (
        per_chunk > 2
        and judge.max_prompt_tokens is not None
        and prompt + per_chunk * completion > judge.max_prompt_tokens
    ):
        per_chunk = math.ceil(per_chunk / 2)
    chunks = math.ceil(g / per_chunk)
    judge_prompt = prompt + per_chunk * completion
    prompts = setup.batch_size * judge.judgments_per_group * chunks  # worst case: every row of the batch is open
    judge_completion = judge.max_new_tokens or completion
    return Shapes(
        prompt,
        completion,
        micro,
        players,
        call,
        prompts,
        judge_prompt,
        judge_completion,
        min(prompts, cap),
        micro_prompts,
        prefills,
    )
