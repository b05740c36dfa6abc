"""``urpo plan --config CONFIG``: the memory and time of a run per rank, before anything is loaded.

    urpo plan --config configs/qwen7b.yaml                       # device memory detected (CUDA) or --device_memory
    urpo plan --config configs/qwen7b.yaml --device_memory 80GB --device_tflops 400
    urpo plan --config my.yaml --model.grpo.max_tokens_per_micro_batch 4096   # try a change without editing YAML

Prints one table of bytes per rank, the total of each phase of a step, a verdict against the device's memory and,
when it does not fit, the settings that would make it fit. Exit status: 0 fits, 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

from urpo.errors import URPOError
from urpo.launch_env import env_options
from urpo.plan.advice import fitting_changes, smallest_peak
from urpo.plan.architecture import ModelFacts, model_facts
from urpo.plan.estimate import GB, PHASES, MemoryPlan, compute_bytes, memory_plan
from urpo.plan.setup import RunSetup, read_config, run_setup
from urpo.plan.shapes import shapes
from urpo.plan.step_time import step_time

DEFAULT_TFLOPS = {"gpu": 200.0, "cpu": 0.5}
"""Sustained throughput assumed when --device_tflops is not given (stated in the report)."""


@dataclass(frozen=True)
class Device:
    """What the plan is checked against."""

    kind: str
    """'gpu' or 'cpu' (host memory)."""
    memory: float | None
    """Bytes, or None when unknown."""
    source: str


def parse_bytes(text: str) -> float:
    """'80GB', '24 GiB', '512MB', '80' (GB), '8.5e10' (bytes when >= 1e6) -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B?)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise URPOError(f"cannot read memory size {text!r} (use e.g. 80GB or 24GiB)")
    value, unit = float(match.group(1)), (match.group(2) or "").upper().rstrip("B")
    if not unit:
        return value if value >= 1e6 else value * GB
    power = "KMGT".index(unit[0]) + 1
    return value * (1024**power if unit.endswith("I") else 1000**power)


def device_for(setup: RunSetup, memory: str | None) -> Device:
    import torch

    gpu = setup.accelerator in ("gpu", "cuda") or (setup.accelerator == "auto" and torch.cuda.is_available())
    kind = "gpu" if gpu else "cpu"
    if memory is not None:
        return Device(kind, parse_bytes(memory), "--device_memory")
    if gpu and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Device(kind, float(props.total_memory), f"detected: {props.name}")
    if not gpu:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Device(kind, float(ram), "detected: host memory")
    return Device(kind, None, "unknown (no CUDA device here): pass --device_memory, e.g. 80GB")


def runtime_reserve(device: Device, peak: float, world_size: int) -> tuple[float, str]:
    """Memory outside urpo's tensors: CUDA context, NCCL buffers and allocator fragmentation; or the host process."""
    if device.kind == "cpu":
        return 1.0 * GB, "Python, torch and Lightning in the process"
    nccl = 0.5 * GB if world_size > 1 else 0.0
    return 1.0 * GB + nccl + 0.1 * peak, "CUDA context, NCCL buffers, 10% allocator fragmentation"


def needed(setup: RunSetup, facts: ModelFacts, device: Device) -> float:
    plan = memory_plan(setup, facts, cuda=device.kind == "gpu")
    return plan.peak + runtime_reserve(device, plan.peak, setup.world_size)[0]


def _gb(value: float) -> str:
    return f"{value / GB:.2f} GB"


def describe_run(setup: RunSetup, facts: ModelFacts) -> list[str]:
    s = shapes(setup)
    strategy = {
        "fsdp2": f"FSDP2 over {setup.world_size} ranks",
        "ddp": f"DDP over {setup.world_size} ranks",
        "single": "one device",
    }[setup.strategy]
    how = "full fine-tuning" if setup.lora is None else f"LoRA r={setup.lora.r}"
    if setup.quantization is not None:
        how += f" on a {setup.quantization.bits}-bit base"
    lines = [
        f"model:  {facts.name}: {facts.params / 1e9:.3g} B parameters, {facts.num_layers} layers, hidden "
        f"{facts.hidden}, vocabulary {facts.vocab} (architecture from {facts.source})",
        f"run:    {strategy}, {how}, {setup.optimizer.rsplit('.', 1)[-1]}, precision {setup.precision}, "
        f"{compute_bytes(setup, facts) * 8}-bit compute, beta {setup.grpo.beta:g}, gradient checkpointing "
        f"{'on' if setup.checkpointing else 'off'}, engine {setup.engine}",
        f"step:   {setup.batch_size} prompts x G={setup.grpo.num_generations} = {s.player_sequences} sequences "
        "a rank of "
        f"<= {s.prompt} + {s.completion} tokens; micro-batches of {_micro_batches(s)} "
        f"(budget {setup.grpo.max_tokens_per_micro_batch})",
    ]
    if s.judge_prompts:
        lines.append(
            f"judge:  up to {s.judge_prompts} judging prompts a rank of <= {s.judge_prompt} + "
            f"{s.judge_completion} tokens, {s.judge_call} at a time"
        )
    return lines


def table(plan: MemoryPlan) -> list[str]:
    """The terms as a Markdown table (docs/scaling.md quotes it as printed)."""
    short = {"rollout": "R", "judge": "J", "update": "U", "update: optimizer step": "S"}
    lines = ["| term | per rank | phases | arithmetic |", "| --- | ---: | --- | --- |"]
    for term in plan.terms:
        phases = "all" if len(term.phases) == len(PHASES) else "".join(short[p] for p in PHASES if p in term.phases)
        lines.append(f"| {term.name} | {_gb(term.bytes)} | {phases} | {term.arithmetic} |")
    totals = ", ".join(f"{p} {_gb(plan.phase_total(p))}" for p in PHASES)
    lines.append("")
    lines.append(f"phases (R rollout, J judge, U update, S its optimizer step): {totals}")
    return lines


def render(
    setup: RunSetup, facts: ModelFacts, device: Device, tflops: float | None, bandwidth: float | None, config_name: str
) -> tuple[list[str], bool]:
    """The whole report and whether the run fits."""
    plan = memory_plan(setup, facts, cuda=device.kind == "gpu")
    reserve, why = runtime_reserve(device, plan.peak, setup.world_size)
    need = plan.peak + reserve
    lines = [f"urpo plan: {config_name}", *describe_run(setup, facts), "", *table(plan), ""]
    lines.append(
        f"peak:   {_gb(plan.peak)} ({plan.peak_phase}) + {_gb(reserve)} runtime reserve ({why}) = {_gb(need)} per rank"
    )
    fits = True
    where = "GPU" if device.kind == "gpu" else "host"
    if device.memory is None:
        lines.append(f"device: {device.source}")
    else:
        fits = need <= device.memory
        verdict = "FITS" if fits else "DOES NOT FIT"
        lines.append(
            f"verdict: {verdict}: {_gb(need)} of {_gb(device.memory)} {where} memory "
            f"({100 * need / device.memory:.0f}%; {device.source})"
        )
        if not fits:
            lines += _advice(setup, facts, device)
    lines += _time(setup, facts, device, tflops, bandwidth)
    lines += [f"note:   {note}" for note in plan.notes]
    return lines, fits


def _advice(setup: RunSetup, facts: ModelFacts, device: Device) -> list[str]:
    changes = fitting_changes(setup, facts, device.memory, lambda s: needed(s, facts, device))
    if changes is None:
        floor = smallest_peak(setup, facts, device.kind == "gpu")
        return [
            f"cannot fit: no setting urpo can change brings {facts.name} within {_gb(device.memory)}; with the "
            f"smallest micro-batch, generation batch and judge prompts, checkpointing, no reference and LoRA a rank "
            f"still needs {_gb(floor)} before runtime reserve. Use a device with more memory or a smaller model."
        ]
    lines = [
        "to fit, change one of:" if len(changes) > 1 or len(changes[0].settings) == 1 else "to fit, change all of:"
    ]
    for change in changes:
        lines.append(f"  - {' + '.join(change.settings)}  -> {_gb(change.peak)}")
    return lines


def _time(
    setup: RunSetup, facts: ModelFacts, device: Device, tflops: float | None, bandwidth: float | None
) -> list[str]:
    stated = tflops is not None
    rate = tflops if stated else DEFAULT_TFLOPS[device.kind]
    t = step_time(setup, facts, rate, bandwidth)
    line = (
        f"time:   ~{t.seconds_train + t.seconds_generate:.1f} s a step at {rate:g} TFLOP/s "
        f"({'--device_tflops' if stated else 'assumed; set --device_tflops'}): update {t.train_flops / 1e15:.2f} "
        f"PFLOP ({t.seconds_train:.1f} s), generation {t.generate_flops / 1e15:.2f} PFLOP ({t.seconds_generate:.1f} s)"
    )
    lines = [line]
    s = shapes(setup)
    if s.player_prefills < s.player_sequences:
        how = "rollout.vllm.enable_prefix_caching" if setup.engine == "vllm" else "sampling.shared_prefill"
        lines.append(
            f"        prefill: the player's prompts computed {s.player_prefills} times for {s.player_sequences} "
            f"sequences ({how})"
        )
    if t.decode_seconds_floor is not None:
        lines.append(
            f"        decoding reads the weights once a token: generation takes at least "
            f"{t.decode_seconds_floor:.1f} s at {bandwidth:g} GB/s"
        )
    else:
        bound = "generation is usually bound by memory bandwidth, not FLOPs: --device_bandwidth GB/s adds that bound"
        lines.append(" " * 8 + bound)
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urpo plan",
        description="Memory per rank and step time of a `urpo fit` config, before launch (nothing is downloaded). "
        "Any other --section.key VALUE overrides the config, as with urpo fit.",
    )
    parser.add_argument("--config", required=True, help="the YAML config given to `urpo fit --config`")
    parser.add_argument(
        "--device_memory", default=None, help="memory of one device, e.g. 80GB or 24GiB (default: detected)"
    )
    parser.add_argument("--device_tflops", type=float, default=None, help="sustained TFLOP/s of one device")
    parser.add_argument("--device_bandwidth", type=float, default=None, help="memory bandwidth of one device in GB/s")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``urpo plan``; exits 0 when the config fits, 1 when it does not, 2 on bad input."""
    args, overrides = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = env_options("fit") + overrides  # the PL_FIT__... variables a launcher sets for `urpo fit`
    try:
        setup = run_setup(read_config(args.config, overrides), source=args.config)
        facts = model_facts(setup.model)
        device = device_for(setup, args.device_memory)
        lines, fits = render(setup, facts, device, args.device_tflops, args.device_bandwidth, args.config)
    except (URPOError, ImportError) as err:
        print(f"urpo plan: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(lines))
    if not fits:
        raise SystemExit(1)
    return 0


def _micro_batches(s) -> str:
    """A full micro-batch: sequences x length, or with the shared-prefix update its prompts and completions."""
    if s.micro_prompts:
        return f"{s.micro_sequences} completions on {s.micro_prompts} shared prompts ({s.micro_tokens} tokens)"
    return f"{s.micro_sequences} x {s.sequence} tokens"
