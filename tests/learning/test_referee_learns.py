"""The referee learns from preference rows alone: GRPO raises a tiny model's judging accuracy on held-out problems.

The world is in :mod:`tests.learning.worlds`: preference rows ``What is a + b?`` with the boxed sum against a
non-answer; a tiny model is warm-started on the judging prompts with RANDOM verdicts, so it writes well-formed
verdicts but judges at chance (50% over both presentation orders). Then URPOModule + PreferenceReward run GRPO on
preference rows only, and the greedy judging accuracy on problems never seen in training must rise by 10+ points.

Measured (seed 0, under heavy CPU load): the warm start's sampled verdicts fail to parse 0.8% of the time; GRPO's
per-kind metrics then show every group informative at first (zero-variance share 0, spread ~0.5, first_shown_top
~0.5), the mean preference reward climbs 0.46 -> ~0.9 by step 20, and held-out greedy accuracy goes 0.50 -> 1.00.
With model seeds 1 and 2 the warm start keeps writing repeated labels (``A > A``) on about half the sampled
verdicts; GRPO from such a start led, in earlier variants, to a judge that always names one position (reward exactly
0.5, spread 0.5, no learning; docs/referee.md). So the warm start is gated: the first of a few model seeds whose
verdicts parse is kept, and a world where none does fails loudly rather than testing GRPO on a broken format.

Across world seeds (6 Dec, under load): seeds 0, 1 and 2 all went 0.50 -> 1.00. Seed 1's warm start needs its
later tries (about 7 minutes under load), so CI runs seeds 0 and 2 (about a minute and a half each under load).
"""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import build_tiny_model
from tests.learning import worlds
from urpo.args import GRPOArgs, LoggingArgs, ModelArgs, PolicyArgs, SamplingArgs
from urpo.models import load_model, load_tokenizer
from urpo.module import URPOModule
from urpo.rewards import PreferenceReward

STEPS, ROWS_PER_STEP, G, LR = 30, 16, 8, 1e-3
TRACKED = (
    "reward/preference_mean",
    "groups/preference_zero_variance_frac",
    "reward/preference_group_spread",
    "reward/preference_reward/parse_failure_rate",
    "reward/preference_reward/first_shown_top",
    "train/entropy",
)


class History(L.Callback):
    """Keeps the tracked step metrics, for the assertion messages and the diagnosis they allow."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        logged = trainer.logged_metrics
        self.steps.append({k: round(float(logged[k]), 3) for k in TRACKED if k in logged})


WARM_START_TRIES = 4
"""Warm starts tried (model seeds ``seed``, ``seed + 100``, ...) before the world gives up: whether a 2-layer model
picks up the verdict format in its budget depends on its initial weights and on the CPU's float path, and the claim
under test is about GRPO, so the test gates the warm start (as tools/evidence does) instead of trusting one draw."""


def warm_started_referee(folder, seed: int) -> str:
    """A tiny model (hidden 128: 64 learns the verdict format too slowly) that writes verdicts but judges at chance.

    The first warm start whose sampled verdicts parse (at most 5% failures) is kept; if none of
    ``WARM_START_TRIES`` does, the test fails naming each try's failure rate.
    """
    warm, _, _ = worlds.split_pairs(seed)
    tried = []
    for attempt in range(WARM_START_TRIES):
        model_seed = seed + 100 * attempt
        build_tiny_model(folder / f"random{attempt}", hidden=128, seed=model_seed)
        tokenizer = load_tokenizer(ModelArgs(name_or_path=str(folder / f"random{attempt}")))
        model = load_model(ModelArgs(name_or_path=str(folder / f"random{attempt}")))
        torch.manual_seed(model_seed)
        failures = worlds.teach_format(model, tokenizer, worlds.referee_rows(warm, "warm", seed), seed=model_seed)
        if failures <= 0.05:
            return worlds.save(model, tokenizer, folder / "warm")
        tried.append(f"model seed {model_seed}: {failures:.0%}")
    pytest.fail(
        "no warm start learned the verdict format (share of sampled verdicts that fail to parse): " + "; ".join(tried)
    )


def run_referee_world(folder, seed: int) -> dict:
    model_dir = warm_started_referee(folder, seed)
    _, train, held = worlds.split_pairs(seed)
    held_rows, train_rows = worlds.referee_rows(held, "held", seed + 1), worlds.referee_rows(train, "train", seed + 2)
    L.seed_everything(seed)  # also seeds the referee's presentation orders (urpo.args.run_seed)
    module = URPOModule(
        policy=PolicyArgs(name_or_path=model_dir),
        rewards=[PreferenceReward(metric="pairwise")],
        grpo=GRPOArgs(num_generations=G),
        sampling=SamplingArgs(max_new_tokens=10),
        referee=worlds.REFEREE,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )
    module.configure_model()
    before = worlds.judging_accuracy(module.policy, module.tokenizer, held_rows)
    rng = random.Random(seed)
    batches = [rng.sample(train_rows, ROWS_PER_STEP) for _ in range(STEPS)]
    history = History()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[history],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    after = worlds.judging_accuracy(module.policy, module.tokenizer, held_rows)
    return {"before": before, "after": after, "history": history.steps}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_preference_rows_alone_teach_the_referee_to_judge_held_out_problems(tmp_path, seed):
    result = run_referee_world(tmp_path, seed)
    print(seed, result["before"], result["after"])
    for i, step in enumerate(result["history"]):
        print(i, step)
    assert result["before"] == pytest.approx(0.5, abs=0.1), result  # the warm start judges at chance
    assert result["after"] >= result["before"] + 0.1, result
