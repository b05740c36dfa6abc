"""Which settings would make a plan fit: each knob is tried alone, mildest value first, then in combination."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from urpo.lora import LoraArgs
from urpo.plan.architecture import ModelFacts
from urpo.plan.estimate import memory_plan, shapes
from urpo.plan.setup import RunSetup

Knob = Callable[[RunSetup], Iterator[tuple[str, RunSetup]]]


@dataclass(frozen=True)
class Change:
    """Settings (as YAML keys) that bring the peak to ``peak`` bytes."""

    settings: tuple[str, ...]
    peak: float


def _micro_batch(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    budget, floor = setup.grpo.max_tokens_per_micro_batch, shapes(setup).sequence
    while budget // 2 >= floor:
        budget //= 2
        yield f"grpo.max_tokens_per_micro_batch: {budget}", _grpo(setup, max_tokens_per_micro_batch=budget)


def _checkpointing(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.checkpointing:
        return
    if setup.fsdp is not None:
        fsdp = dataclasses.replace(setup.fsdp, activation_checkpointing=True)
        yield "trainer.strategy.init_args.activation_checkpointing: true", setup.replace(fsdp=fsdp)
    else:
        yield "model.gradient_checkpointing: true", setup.replace(gradient_checkpointing=True)


def _generate_batch(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.engine != "hf":
        return
    s = shapes(setup)
    size = max(s.player_call, s.judge_call)
    while size > 1:
        size //= 2
        yield f"sampling.max_batch_size: {size}", setup.replace(sampling=dataclasses.replace(setup.sampling, max_batch_size=size))


def _judge_prompt(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    s = shapes(setup)
    if setup.judge is None or not s.judge_prompts:
        return
    limit, floor = s.judge_prompt, s.prompt + 2 * s.completion
    while limit // 2 >= floor:
        limit //= 2
        judge = dataclasses.replace(setup.judge, max_prompt_tokens=limit)
        yield f"SelfJudge init_args.max_prompt_tokens: {limit}", setup.replace(judge=judge)


def _no_reference(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.grpo.beta > 0 and setup.lora is None:
        yield "grpo.beta: 0 (no reference copy)", _grpo(setup, beta=0.0)


def _eight_bit(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if "8bit" not in setup.optimizer.lower() and setup.strategy != "fsdp2":
        yield "model.optimizer.class_path: bitsandbytes.optim.AdamW8bit", setup.replace(optimizer="bitsandbytes.optim.AdamW8bit")


def _more_ranks(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.strategy != "fsdp2":
        return
    for factor in (2, 4, 8):
        nodes = setup.num_nodes * factor
        yield f"trainer.num_nodes: {nodes} (FSDP2 over {nodes * setup.devices} GPUs)", setup.replace(num_nodes=nodes)


def _lora(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.lora is None:
        yield "model.lora: {r: 16} (train adapters, the reference is free)", setup.replace(lora=LoraArgs())


def _grpo(setup: RunSetup, **changes) -> RunSetup:
    return setup.replace(grpo=dataclasses.replace(setup.grpo, **changes))


KNOBS: tuple[Knob, ...] = (
    _micro_batch, _checkpointing, _generate_batch, _judge_prompt, _no_reference, _eight_bit, _more_ranks, _lora,
)  # fmt: skip
"""In the order they are suggested: the ones that change least about the training run first."""


def fitting_changes(
    setup: RunSetup, facts: ModelFacts, budget: float, peak_of: Callable[[RunSetup], float], most: int = 3
) -> list[Change] | None:
    """Up to ``most`` single settings that each bring the peak within ``budget``, or one combination of several.

    ``peak_of`` maps a setup to the bytes it needs (the plan's peak plus the runtime reserve). Returns None when
    nothing urpo can change makes it fit.
    """
    singles = []
    for knob in KNOBS:
        for label, candidate in knob(setup):
            need = peak_of(candidate)
            if need <= budget:
                singles.append(Change((label,), need))
                break
        if len(singles) == most:
            return singles
    if singles:
        return singles
    return _combination(setup, budget, peak_of)


def _combination(setup: RunSetup, budget: float, peak_of: Callable[[RunSetup], float]) -> list[Change] | None:
    """Greedily apply the strongest value of the knob that lowers the peak most, until it fits."""
    chosen: list[str] = []
    current = setup
    for _ in range(len(KNOBS)):
        options = [list(knob(current)) for knob in KNOBS]
        strongest = [values[-1] for values in options if values]
        if not strongest:
            return None
        label, best = min(strongest, key=lambda option: peak_of(option[1]))
        if peak_of(best) >= peak_of(current):
            return None
        chosen.append(label)
        current = best
        if peak_of(current) <= budget:
            return [Change(tuple(chosen), peak_of(current))]
    return None


def smallest_peak(setup: RunSetup, facts: ModelFacts, cuda: bool) -> float:
    """The plan's peak with every knob at its strongest value (for the 'cannot fit' message)."""
    current = setup
    for knob in KNOBS:
        values = list(knob(current))
        if values and knob is not _more_ranks:
            current = values[-1][1]
    return memory_plan(current, facts, cuda).peak
