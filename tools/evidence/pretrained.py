"""The real-model world's starting point: the pretrained model, saved once, measured in both roles, and gated.

Every run of the ``smollm2`` world starts from the same pretrained weights, so there is nothing to train before RL;
what the gate asks of a pretrained model is that its starting scores are measured and are what the world claims:
before RL it is scored on check sets that nothing trains on and the table never reports (solving each form,
judging pairs in both presentation orders), and :class:`PretrainedGateError` is raised, naming every score, when a
target is missed. The dequantized model is saved as a plain ``save_pretrained`` folder, so that the runs load it in
seconds (reading the GGUF file takes a minute).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.evidence.evaluate import HeldOut, evaluate
from tools.evidence.smollm2 import MODEL
from tools.evidence.spec import world_spec
from tools.evidence.warm_start import WarmStartError, missed_targets


class PretrainedGateError(WarmStartError):
    """The pretrained model missed a target on the check sets: the world does not test what it claims to."""


@dataclass(frozen=True)
class GateConfig:
    """Which model starts every run, and the scores it must reach on the check sets before RL."""

    model: str = MODEL
    """``ModelArgs.name_or_path`` of the starting model (the tests pass a tiny stand-in)."""
    target_solve: float = 0.15
    """Greedy accuracy it must reach on the check problems of EACH form (guessing an exact sum scores about 0)."""
    target_judge: float = 0.0
    """Judging accuracy it must reach on the check pairs, both presentation orders (0.5: chance, and what a judge
    that always names the same position gets). 0: measured, not claimed: greedy SmolLM2-135M closed its verdict in
    12-33% of the judgments tried when the world was chosen, and then named the first response shown."""

    def targets(self) -> dict[str, float]:
        """The check scores the pretrained model must reach: solving each form, and judging (0: measured only)."""
        return {
            "open_accuracy": self.target_solve,
            "verifiable_accuracy": self.target_solve,
            "referee_accuracy": self.target_judge,
        }


def prepare_pretrained(out: Path, files: dict[str, str], gate: GateConfig, world: str = "smollm2") -> dict:
    """Saves ``gate.model`` into ``out``, scores it on the check sets (the gate) and the held-out sets.

    A folder already holding the same model with the same gate and check sets (``pretrained.json``) is reused.
    Raises :class:`PretrainedGateError` when a check score misses its target (the model is kept, and the scores
    written to ``pretrained_failed.json``, for inspection).
    """
    from urpo.args import ModelArgs
    from urpo.models import load_model, load_tokenizer

    start, spec = time.time(), world_spec(world)
    record = {"gate": asdict(gate), "world": world, "check_files": {k: v for k, v in files.items() if "check" in k}}
    stamp = out / "pretrained.json"
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in record} == record:
            return {**saved, "reused": True, "seconds": time.time() - start}
    args = ModelArgs(name_or_path=gate.model, dtype="float32")
    tokenizer, model = load_tokenizer(args), load_model(args).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    checks = evaluate(model, tokenizer, HeldOut.load(files, prefix="check"), spec)
    record["checks"] = [{"step": 0, **checks}]
    missed = missed_targets(checks, gate)
    if missed:
        (out / "pretrained_failed.json").write_text(json.dumps(record, indent=1))
        raise PretrainedGateError(
            f"pretrained model {gate.model!r} missed its targets on the check sets: {', '.join(missed)}; "
            f"every check score: {checks}"
        )
    record["scores"] = evaluate(model, tokenizer, HeldOut.load(files), spec)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["seconds"] = time.time() - start
    stamp.write_text(json.dumps(record, indent=1))
    return record


def gate_note(record: dict) -> str:
    """One line for the results table: the pretrained model's check scores against the gate's targets."""
    gate, checks = record["gate"], record["checks"][-1]
    judge_target = (
        f"target >= {100 * gate['target_judge']:.0f}%" if gate["target_judge"] > 0 else "measured, not claimed"
    )
    return (
        f"Before RL, the pretrained model ({gate['model']}) scored on the check sets: "
        f"open {100 * checks['open_accuracy']:.1f}%, verifiable {100 * checks['verifiable_accuracy']:.1f}% "
        f"(target >= {100 * gate['target_solve']:.0f}% each), judging {100 * checks['referee_accuracy']:.1f}% "
        f"({judge_target}; {100 * checks.get('referee_parsed', 1.0):.1f}% of its judgments parsed). "
        "It is the 'warm start' row, shared by every seed."
    )
