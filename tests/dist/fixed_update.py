"""Train the tiny model on FIXED completions under one strategy; tests compare runs across strategies.

Run as a script (Lightning's DDP launcher re-runs the command line for every rank, so it cannot run inside pytest)::

    python tests/dist/fixed_update.py --strategy fsdp2 --devices 2 --model DIR --out DIR --steps 4

Each step does what a GRPO step does, minus the randomness that would make runs incomparable:

* it takes a batch from :class:`URPODataModule` (the rows are recorded, to check that ranks see disjoint data);
* it samples completions whose length differs on purpose between ranks (``max_new_tokens`` grows with the rank),
  through the module's engine and, under FSDP2, also straight on the sharded policy (``synced_gpus``); a deadlock
  would make the test's subprocess time out;
* it updates on a fixed global set of hand-made completions, split between ranks (``global[rank::world]``), so a
  2-rank run must end with the same weights as a 1-rank run with the same global batch.

Every rank writes ``rank<R>.json`` (rows seen, shard shapes, checks); rank 0 also writes ``policy.pt`` (the full
state dict) and, with ``--export``, an HF folder.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.dist.common import base_logprobs, fixed_sequences, shard_report
from urpo.args import GRPOArgs, LoggingArgs, LoraArgs, PolicyArgs, SamplingArgs
from urpo.data.datamodule import URPODataModule
from urpo.data.sources import SourceSpec
from urpo.export import export_policy, full_state_dict
from urpo.module import URPOModule
from urpo.prompts import render_chat
from urpo.rewards.verifier import MathVerifier
from urpo.sequences import collate
from urpo.strategies import FSDP2Strategy, is_sharded, release_process_group


class FixedUpdateModule(URPOModule):
    """URPOModule whose step samples (to test generation) but trains on fixed completions."""

    def on_fit_start(self) -> None:
        self.seen: list[list] = []
        self.generated: list[int] = []
        self.checks: dict[str, float | bool] = {}
        self.steps: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend([row.source, row.index] for row in batch)
        self.steps.append([self.global_step, self.trainer.current_epoch])
        self._ragged_generation(batch)
        everything = fixed_sequences(self.global_step, vocab=len(self.tokenizer))
        mine = everything[self.global_rank :: self.trainer.world_size]
        metrics = self.update(mine)
        self.log("loss", metrics["train/loss"], on_step=True)

    def _ragged_generation(self, batch) -> None:
        prompts = [render_chat(self.tokenizer, self.player.messages(row)) for row in batch]
        sampling = SamplingArgs(max_new_tokens=2 + 10 * self.global_rank)  # ranks stop at different lengths
        out = self.engine.generate(prompts, 2, sampling)
        self.generated.extend(len(ids) for ids in out.completion_ids)
        inner = getattr(self.engine, "engine", None)
        if inner is not None:
            # The sharded path: every token's forward all-gathers, so ranks must stay in step (synced_gpus).
            seed = 1000 + self.global_step
            torch.manual_seed(seed)
            gathered = self.engine.generate(prompts[:1], 2, sampling).completion_ids
            torch.manual_seed(seed)
            sharded = inner.generate(prompts[:1], 2, sampling).completion_ids
            self.checks["unsharded_generation_matches"] = self.checks.get("unsharded_generation_matches", True) and (
                gathered == sharded
            )

    def on_fit_end(self) -> None:
        pass  # the script exports explicitly (and only when asked)


def build_strategy(args: argparse.Namespace):
    if args.strategy == "fsdp2":
        param_dtype = None if args.param_dtype == "none" else args.param_dtype
        return FSDP2Strategy(param_dtype=param_dtype, activation_checkpointing=args.activation_checkpointing)
    return "ddp" if args.strategy == "ddp" else "auto"


def build_module(args: argparse.Namespace) -> FixedUpdateModule:
    return FixedUpdateModule(
        policy=PolicyArgs(args.model, lora=LoraArgs(r=4, init_lora_weights="gaussian") if args.lora else None),
        rewards=[MathVerifier()],
        grpo=GRPOArgs(num_generations=2, beta=args.beta, max_tokens_per_micro_batch=args.micro_tokens),
        sampling=SamplingArgs(max_new_tokens=8),
        optimizer=lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )


def main() -> None:
    args = parse_args()
    # A rank stuck in a collective prints where it is, then the run ends (the test sees the stacks, not a timeout).
    faulthandler.dump_traceback_later(args.hang_after, exit=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    module = build_module(args)
    data = URPODataModule(
        sources=[SourceSpec(adapter="gsm8k", path=str(ROOT / "src/urpo/data/samples/gsm8k_train.jsonl"))],
        batch_size=2,
    )
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=build_strategy(args), max_steps=args.steps,
        precision=args.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=data, ckpt_path=args.resume)
    if args.save_checkpoint:
        trainer.save_checkpoint(out / "checkpoint")
    report = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "seen": module.seen,
        "steps": module.steps,
        "generated_lengths": module.generated,
        "policy_sharded": is_sharded(module.policy),
        "reference_sharded": is_sharded(module.reference),
        "reference_dtype": str(next(module.reference.parameters()).dtype) if module.reference is not None else None,
        "shards": shard_report(module.policy),
        **module.checks,
    }
    if args.lora:
        report.update(_reference_checks(module, args.model))
    state = full_state_dict(module.policy)
    if trainer.global_rank == 0:
        torch.save(state, out / "policy.pt")
    if args.export:
        export_policy(module.policy, module.tokenizer, out / "hf_model", rank=module.global_rank)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
    release_process_group()  # as `urpo fit` does: a gloo group left for interpreter shutdown can abort the rank


def _reference_checks(module: URPOModule, model_dir: str) -> dict[str, float]:
    """Under LoRA the reference must be the base model: compare with a fresh, unsharded copy of it."""
    batch = collate(fixed_sequences(0, vocab=len(module.tokenizer))[:2], module.tokenizer.pad_token_id, module.device)
    with torch.no_grad(), module._reference_model() as reference:
        ref = _logprobs(reference, batch)
    policy = _logprobs(module.policy, batch)
    base = base_logprobs(model_dir, batch)
    return {"reference_vs_base": float((ref - base).abs().max()), "policy_vs_base": float((policy - base).abs().max())}


@torch.no_grad()
def _logprobs(model: torch.nn.Module, batch) -> torch.Tensor:
    from urpo.sequences import completion_logits, token_logprobs

    return token_logprobs(completion_logits(model, batch), batch.completion_ids) * batch.completion_mask


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp2"], required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resume", default=None, help="checkpoint to resume from")
    parser.add_argument("--save-checkpoint", action="store_true")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--param-dtype", default="none", choices=["none", "bfloat16", "float32"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--micro-tokens", type=int, default=96)
    parser.add_argument("--hang-after", type=float, default=200, help="dump every thread's stack and exit after this")
    return parser.parse_args()


if __name__ == "__main__":
    main()
