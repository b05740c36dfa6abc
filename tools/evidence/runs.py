"""One training run of the evidence: URPO, the separate-referee baseline (and its referee), or verifiable-only GRPO.

Every run starts from the same warm start (in the ``smollm2`` world: the pretrained model) and has the same budget:
``steps`` optimizer steps of ``prompts_per_step`` prompts with G completions each. Only the mixture of row kinds
and the reward callbacks differ:

==================  =====================================  ==============================================
run                 rows per step                          rewards
==================  =====================================  ==============================================
``urpo``            verifiable, preference, open (1:1:1)   MathVerifier, PreferenceReward, SelfJudge
``referee``         preference only, as many as URPO sees  PreferenceReward (then frozen: the baseline's RM)
``separate_referee``verifiable, open (1:1)                 MathVerifier, FrozenJudge(referee)
``verifiable_only`` verifiable                             MathVerifier
==================  =====================================  ==============================================
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L

RUN_MIXTURES: dict[str, dict[str, float]] = {
    "urpo": {"verifiable": 1.0, "preference": 1.0, "open": 1.0},
    "referee": {"preference": 1.0},
    "separate_referee": {"verifiable": 1.0, "open": 1.0},
    "verifiable_only": {"verifiable": 1.0},
}


@dataclass(frozen=True)
class RLConfig:
    """The budget and GRPO settings shared by every run."""

    steps: int = 120
    """Optimizer steps of every run."""
    prompts_per_step: int = 18
    """Rows per step (URPO: 6 of each kind). With 2 of each, 8 preference judgments per step, URPO's referee did
    not move in 120 steps; with 6 (24 judgments) it did (docs/evidence.md)."""
    num_generations: int = 4
    """G: completions per prompt."""
    lr: float = 1e-4
    """AdamW learning rate (a tiny model trained from scratch takes a far larger step than 7B models' 1e-6). At 5e-5
    the referee's sampled judging rose 3 points in 120 steps, at 1e-4 8 points; at 2e-4 every run, even
    verifiable-only GRPO, lost held-out accuracy on the operation it was not rewarded on, and at 3e-4 the referee
    collapsed."""
    max_new_tokens: int = 32
    """Token limit of answers and of judgments (an answer takes 5 tokens, a judgment with its checks about 25)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts: answers, and the judgments of preference rows."""
    preference_orders: str = "mirrored"
    """``grpo.preference_orders``: 'mirrored' (half of each preference group sees the reversed order) or 'shared'."""
    judgments_per_group: int = 4
    """Judging prompts per open group and per shown pair order: 2 mirrored shuffles (SelfJudge, chunk_size 2)."""
    judge_temperature: float | None = 0.3
    """Sampling temperature of the open-row judgments (None: the policy's, 1.0). At 1.0 the warm start's rewards
    agreed with the truth on 53% of answer pairs, at 0.3 on 60% (one seed, judging by solving)."""
    beta: float = 0.0
    """``grpo.beta``: weight of the KL penalty to the warm start (DeepSeekMath's GRPO, arXiv 2402.03300, used 0.04)."""
    preference_consistency: bool = False
    """``PreferenceReward(consistency=...)``: judge each preference row in both orders and reward only a verdict that
    both orders agree on (J1's rule); a judge that names one position is then never rewarded (diagnosis only)."""
    referee_rows: int | None = None
    """Preference rows per step of the referee-only run (None: as many as URPO's batch holds; diagnosis only)."""
    eval_every: int = 30
    """Score on the held-out sets every this many steps (and before the first)."""
    eval_limit: int | None = None
    """Score only the first N held-out rows of each set (None: all; the smoke test uses a few)."""
    eval_at_start: bool = True
    """Score the starting model again at step 0 of every run; False reuses the scores its warm-start task wrote
    (``scores.json`` in its folder): greedy decoding of the same weights gives the same scores, and a real model's
    evaluation is costly."""
    judge_max_new_tokens: int | None = None
    """Token limit of open-row judgments (None: ``max_new_tokens``); a verdict-first referee needs a few."""
    world: str = "arithmetic"
    """Which world's prompts the runs use (:data:`tools.evidence.spec.WORLDS`)."""


def referee_batch(cfg: RLConfig) -> int:
    """Preference rows per step in URPO's batch: the frozen referee is trained on as many, for as many steps."""
    from urpo.data.mixture import kind_quotas

    if cfg.referee_rows is not None:
        return cfg.referee_rows
    return kind_quotas(RUN_MIXTURES["urpo"], cfg.prompts_per_step)["preference"]  # type: ignore[arg-type]


def quiet() -> None:
    """One thread per run (runs go in parallel), and no Lightning banner or transformers progress bar per run."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def judge_args(cfg: RLConfig, seed: int) -> dict[str, Any]:
    """SelfJudge settings shared by URPO's self-judge and the baseline's frozen judge: pairs, mirrored orders."""
    return {
        "judgments_per_group": cfg.judgments_per_group,
        "chunk_size": 2,
        "shuffle": "mirrored",
        "seed": seed,
        "temperature": cfg.judge_temperature,
        "max_new_tokens": cfg.judge_max_new_tokens,
    }


def rewards_for(run: str, cfg: RLConfig, seed: int, files: dict[str, str], referee_dir: str | None) -> list:
    from tools.evidence.judges import FrozenJudge, ProbedSelfJudge
    from tools.evidence.spec import world_spec
    from urpo.rewards.preference import PreferenceReward

    truth, verifier = files["truth_open_train"], world_spec(cfg.world).verifier
    preference = partial(PreferenceReward, seed=seed, consistency=cfg.preference_consistency)
    judge = {**judge_args(cfg, seed), "world": cfg.world}
    table = {
        "urpo": lambda: [verifier(), preference(), ProbedSelfJudge(truth, **judge)],
        "referee": lambda: [preference()],
        "separate_referee": lambda: [verifier(), FrozenJudge(referee_dir, truth, **judge)],
        "verifiable_only": lambda: [verifier()],
    }
    return table[run]()


STEP_PREFIXES = (
    "reward/",
    "groups/",
    "rows/",
    "advantage/",
    "train/loss",
    "train/grad_norm",
    "train/entropy",
    "time/",
)
"""Per-step metrics the runs keep: rewards, the zero-variance share and spread of groups per kind, the update, and
urpo's step timings (``time/step`` and its phases: rollout, rewards, update)."""


class StepRecorder(L.Callback):
    """Keeps the metrics Lightning collected at every step (:data:`STEP_PREFIXES`; parse failure counts left out)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics.items()
        keep = {k: float(v) for k, v in metrics if k.startswith(STEP_PREFIXES) and "parse_failure/" not in k}
        self.steps.append({"step": module.global_step, **keep})


def train_run(
    run: str,
    seed: int,
    warm_dir: str,
    files: dict[str, str],
    cfg: RLConfig,
    referee_dir: str | None = None,
    save_dir: str | None = None,
) -> dict[str, Any]:
    """Trains one run and returns its held-out history, per-step reward metrics and wall time."""
    import torch

    from tools.evidence.evaluate import EvalCallback, HeldOut
    from tools.evidence.spec import world_spec
    from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, SamplingArgs
    from urpo.data.datamodule import URPODataModule
    from urpo.data.sources import SourceSpec
    from urpo.module import URPOModule

    quiet()
    start, spec = time.time(), world_spec(cfg.world)
    L.seed_everything(seed, verbose=False)  # also the presentation orders and data shuffles (urpo.args.run_seed)
    module = URPOModule(
        policy=PolicyArgs(name_or_path=warm_dir),
        rewards=rewards_for(run, cfg, seed, files, referee_dir),
        grpo=GRPOArgs(num_generations=cfg.num_generations, preference_orders=cfg.preference_orders, beta=cfg.beta),  # type: ignore[arg-type]
        sampling=SamplingArgs(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
        player=spec.player,
        referee=spec.referee,
        optimizer=partial(torch.optim.AdamW, lr=cfg.lr, weight_decay=0.0),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )
    batch = referee_batch(cfg) if run == "referee" else cfg.prompts_per_step
    data = URPODataModule(
        sources=[SourceSpec(adapter="generic", path=files["train"])], mixture=RUN_MIXTURES[run], batch_size=batch
    )
    initial = None if cfg.eval_at_start else start_scores(warm_dir)
    evaluator = EvalCallback(HeldOut.load(files, cfg.eval_limit), cfg.eval_every, spec, initial)
    recorder = StepRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=cfg.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[evaluator, recorder],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    if save_dir is not None:
        module.policy.save_pretrained(save_dir)
        module.tokenizer.save_pretrained(save_dir)
    return {
        "run": run,
        "seed": seed,
        "history": evaluator.history,
        "steps": recorder.steps,
        "final": evaluator.history[-1],
        "seconds": time.time() - start,
        "config": asdict(cfg),
    }


SCORES_FILE = "scores.json"
"""Written into a warm start's folder: its held-out scores, which runs with ``eval_at_start=False`` reuse."""


def start_scores(warm_dir: str) -> dict[str, float]:
    """The held-out scores the warm-start task recorded for the model in ``warm_dir``."""
    return json.loads((Path(warm_dir) / SCORES_FILE).read_text())


def evaluate_model(model_dir: str, files: dict[str, str], cfg: RLConfig) -> dict[str, float]:
    """Held-out scores of a saved model (the warm start without RL)."""
    from transformers import AutoModelForCausalLM

    from tools.evidence.evaluate import HeldOut, evaluate
    from tools.evidence.spec import world_spec
    from urpo.args import ModelArgs
    from urpo.models import load_tokenizer

    quiet()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(ModelArgs(name_or_path=model_dir))
    return evaluate(model, tokenizer, HeldOut.load(files, cfg.eval_limit), world_spec(cfg.world))


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one task of the plan (picklable entry point for worker processes)."""
    quiet()
    start, cpu_start = time.time(), time.process_time()
    kind = task["kind"]
    if kind == "warm":
        import torch

        from tools.evidence.warm_start import WarmStartConfig, build_warm_start

        torch.set_num_threads(task.get("threads", 1))  # a shared warm start runs alone: it may use every core
        out = build_warm_start(Path(task["out"]), task["seed"], WarmStartConfig(**task["warm"]))
        out["scores"] = evaluate_model(task["out"], task["files"], RLConfig(**task["rl"]))
        (Path(task["out"]) / SCORES_FILE).write_text(json.dumps(out["scores"]))
    elif kind == "pretrained":
        import torch

        from tools.evidence.pretrained import GateConfig, prepare_pretrained

        torch.set_num_threads(task.get("threads", 1))  # it runs before every other task: it may use every core
        rl = RLConfig(**task["rl"])
        out = prepare_pretrained(Path(task["out"]), task["files"], GateConfig(**task["warm"]), rl.world)
        (Path(task["out"]) / SCORES_FILE).write_text(json.dumps(out["scores"]))
    else:
        out = train_run(
            kind,
            task["seed"],
            task["warm_dir"],
            task["files"],
            RLConfig(**task["rl"]),
            task.get("referee_dir"),
            task.get("save_dir"),
        )
    # CPU seconds of this single-threaded process: on a shared machine, close to the wall time it takes on an idle core.
    out["seconds"], out["cpu_seconds"] = time.time() - start, time.process_time() - cpu_start
    return out
