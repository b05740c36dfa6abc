"""Which settings would make a plan fit: each knob is tried alone, mildest value first, then in combination."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from urpo.args import LoraArgs
from urpo.plan.architecture import ModelFacts
from urpo.plan.estimate import memory_plan
from urpo.plan.setup import RunSetup
from urpo.plan.shapes import shapes

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
        yield f"model.grpo.max_tokens_per_micro_batch: {budget}", _grpo(setup, max_tokens_per_micro_batch=budget)


def _checkpointing(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.checkpointing:
        return
    if setup.fsdp is not None:
        fsdp = dataclasses.replace(setup.fsdp, activation_checkpointing=True)
        yield "trainer.strategy.init_args.activation_checkpointing: true", setup.replace(fsdp=fsdp)
    else:
        yield "model.policy.gradient_checkpointing: true", setup.replace(gradient_checkpointing=True)


def _generate_batch(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.engine != "hf":
        return
    s = shapes(setup)
    size = max(s.player_call, s.judge_call)
    while size > 1:
        size //= 2
        yield (
            f"model.sampling.max_batch_size: {size}",
            setup.replace(sampling=dataclasses.replace(setup.sampling, max_batch_size=size)),
        )


def _judge_prompt(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    s = shapes(setup)
    if setup.judge is None or not s.judge_prompts:
        return
    limit, floor = s.judge_prompt, s.prompt + 2 * s.completion
    while limit // 2 >= floor:
        limit //= 2
        judge = dataclasses.replace(setup.judge, max_prompt_tokens=limit)
        yield f"SelfJudge max_prompt_tokens: {limit} (in model.rewards)", setup.replace(judge=judge)


def _no_reference(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.grpo.beta > 0 and setup.lora is None:
        yield "model.grpo.beta: 0 (no reference copy)", _grpo(setup, beta=0.0)


def _eight_bit(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if "8bit" not in setup.optimizer.lower() and setup.strategy != "fsdp2":
        yield (
            "model.optimizer.class_path: bitsandbytes.optim.AdamW8bit",
            setup.replace(optimizer="bitsandbytes.optim.AdamW8bit"),
        )


def _more_ranks(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.strategy != "fsdp2":
        return
    for factor in (2, 4, 8):
        nodes = setup.num_nodes * factor
        yield f"trainer.num_nodes: {nodes} (FSDP2 over {nodes * setup.devices} GPUs)", setup.replace(num_nodes=nodes)


def _lora(setup: RunSetup) -> Iterator[tuple[str, RunSetup]]:
    if setup.lora is None:
        yield "model.policy.lora: {r: 16} (train adapters, the reference is free)", setup.replace(lora=LoraArgs())


def _grpo(setup: RunSetup, **changes) -> RunSetup:
    return setup.replace(grpo=dataclasses.replace(setup.grpo, **changes))


MILD: tuple[Knob, ...] = (_micro_batch, _checkpointing, _generate_batch, _judge_prompt, _no_reference, _eight_bit)
"""Knobs that keep the model, the hardware and the objective's meaning, in the order they are suggested."""
HEAVY: tuple[Knob, ...] = (_more_ranks, _lora)
"""Knobs that change the hardware or what is trained."""
KNOBS = MILD + HEAVY


def fitting_changes(
    setup: RunSetup, facts: ModelFacts, budget: float, peak_of: Callable[[RunSetup], float], most: int = 3
) -> list[Change] | None:
    """Settings that bring the peak within ``budget``: up to ``most`` single mild changes, else one combination of
    mild changes, else single heavy ones (more GPUs, LoRA), else a combination of everything.

    ``peak_of`` maps a setup to the bytes it needs (the plan's peak plus the runtime reserve). Returns None when
    nothing urpo can change makes it fit.
    """
    for knobs in (MILD, HEAVY):
        singles = _singles(setup, knobs, budget, peak_of)[:most]
        if singles:
            return singles
        combined = _pruned(setup, knobs if knobs is MILD else KNOBS, budget, peak_of)
        if combined is not None:
            return [combined]
    return None


def _pruned(
    setup: RunSetup, knobs: tuple[Knob, ...], budget: float, peak_of: Callable[[RunSetup], float]
) -> Change | None:
    """The greedy combination, then without each knob it used whose absence still fits (fewer changes to make)."""
    best = _combination(setup, knobs, budget, peak_of)
    if best is None:
        return None
    for knob in reversed(knobs):
        fewer = tuple(k for k in knobs if k is not knob)
        candidate = _combination(setup, fewer, budget, peak_of)
        if candidate is not None and len(candidate.settings) < len(best.settings):
            best, knobs = candidate, fewer
    return best


def _singles(
    setup: RunSetup, knobs: tuple[Knob, ...], budget: float, peak_of: Callable[[RunSetup], float]
) -> list[Change]:
    """For each knob alone, its mildest value that fits."""
    found = []
    for knob in knobs:
        for label, candidate in knob(setup):
            need = peak_of(candidate)
            if need <= budget:
                found.append(Change((label,), need))
                break
    return found


def _combination(
    setup: RunSetup, knobs: tuple[Knob, ...], budget: float, peak_of: Callable[[RunSetup], float]
) -> Change | None:
    """One step at a time (one halving, one switch), always the step that lowers the peak most, until it fits."""
    labels: dict[Knob, str] = {}
    current, need = setup, peak_of(setup)
    for _ in range(64):
        steps = [(knob, *next(iter(knob(current)), (None, None))) for knob in knobs]
        steps = [(knob, label, candidate) for knob, label, candidate in steps if candidate is not None]
        if not steps:
            return None
        knob, label, best = min(steps, key=lambda step: peak_of(step[2]))
        if peak_of(best) >= need:
            return None
        labels[knob] = label
        current, need = best, peak_of(best)
        if need <= budget:
            return Change(tuple(labels[k] for k in knobs if k in labels), need)
    return None


def smallest_peak(setup: RunSetup, facts: ModelFacts, cuda: bool) -> float:
    """The plan's peak with every knob at its strongest value (for the 'cannot fit' message)."""
    current = setup
    for knob in KNOBS:
        values = list(knob(current))
        if values and knob is not _more_ranks:
            current = values[-1][1]
    return memory_plan(current, facts, cuda).peak
