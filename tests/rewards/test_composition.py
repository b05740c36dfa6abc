"""Reward callbacks on the real tiny model: self-judging with real generation, and one training step mixing all
three kinds (MathVerifier, PreferenceReward, SelfJudge, plus a custom length penalty) that updates the model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.rewards.fakes import ScriptedEngine, perfect_judge, quality, ranking, shown_responses
from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, SamplingArgs
from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow
from urpo.module import URPOModule
from urpo.rewards import MathVerifier, PreferenceReward, RewardCallback, RewardResult, SelfJudge
from urpo.rewards.base import Episode
from urpo.timing import PHASES

G = 3


class LengthPenalty(RewardCallback):
    """A custom reward, as a user would write one: minus ``per_char`` for every character of the completion.

    Args:
        per_char: the penalty per character.
        weight: multiplies the rewards.
        kinds: the row kinds served (default: verifiable and open rows).
        name: the name metrics are logged under (default ``length_penalty``).
    """

    default_kinds = ("verifiable", "open")

    def __init__(
        self, per_char: float = 0.01, weight: float = 1.0, kinds: Sequence[str] | None = None, name: str | None = None
    ) -> None:
        super().__init__(weight=weight, kinds=kinds, name=name)
        self.per_char = per_char

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        chars = torch.tensor([[len(c) for c in e.completions] for e in episodes], dtype=torch.float32)  # [N, G]
        return RewardResult(-self.per_char * chars, {"chars_mean": chars.mean().item()})


def rows() -> list:
    return [
        VerifiableRow(source="t", index=0, prompt="What is 2 + 2?", answer="4"),
        PreferenceRow(
            source="t", index=1, prompt="Which is better?", responses=("bad q=0", "good q=1"), scores=(0.0, 1.0)
        ),
        OpenRow(source="t", index=2, prompt="Write something nice.", reference="Something nice."),
    ]


def make_module(
    model_dir: str, rewards: list[RewardCallback], engine_factory=None, preference_orders: str = "mirrored"
) -> URPOModule:
    class Module(URPOModule):
        def _build_engine(self):
            return engine_factory(self) if engine_factory else super()._build_engine()

    module = Module(
        policy=PolicyArgs(name_or_path=model_dir),
        rewards=rewards,
        grpo=GRPOArgs(num_generations=G, preference_orders=preference_orders),
        sampling=SamplingArgs(max_new_tokens=8),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    module.configure_model()
    return module


def fit_one_step(module: URPOModule, tmp_path) -> dict[str, float]:
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=DataLoader([rows()], batch_size=None, collate_fn=lambda batch: batch))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def changed_fraction(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    after = dict(model.named_parameters())
    return sum(not torch.equal(before[n], after[n].detach()) for n in before) / len(before)


def test_self_judge_on_the_tiny_model_really_generates(tiny_model_dir: str) -> None:
    judge = SelfJudge(judgments_per_group=2, max_new_tokens=6)
    module = make_module(tiny_model_dir, [MathVerifier(), judge])
    calls = []
    generate = module.engine.generate

    def counted(prompts, n, sampling):
        calls.append((len(prompts), n))
        return generate(prompts, n, sampling)

    module.engine.generate = counted
    episodes = module.rollout([OpenRow(source="t", index=i, prompt=f"Say {i}.") for i in range(2)])
    result = judge.score(episodes)
    assert calls == [(2, G), (4, 1)]  # the rollout, then ONE judging call: 2 groups x 2 judgments
    rewards, m = result.rewards, result.metrics
    assert tuple(rewards.shape) == (2, G)
    nan = torch.isnan(rewards)
    assert torch.all(nan | ((rewards >= 0) & (rewards <= 1)))
    # The random model rarely writes a valid ranking: whatever happened, the counts must agree with the rewards.
    assert m["judgments"] == 4.0
    assert m["unranked_frac"] == pytest.approx(nan.float().mean().item())
    assert m["skipped_group_frac"] == pytest.approx(nan.all(dim=1).float().mean().item())
    failures = sum(v for k, v in m.items() if k.startswith("parse_failure/"))
    assert failures == pytest.approx(m["parse_failure_rate"] * 4)
    if m["parse_failure_rate"] == 1.0:
        assert nan.all()


def test_one_training_step_with_all_kinds_updates_the_model(tiny_model_dir: str, tmp_path) -> None:
    rewards = [MathVerifier(), PreferenceReward(), SelfJudge(), LengthPenalty(kinds=("verifiable", "open"))]
    module = make_module(tiny_model_dir, rewards)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    metrics = fit_one_step(module, tmp_path)
    # Verifiable groups differ in length, so the length penalty alone gives them nonzero advantages.
    assert changed_fraction(before, module.policy) > 0.5
    assert {f"time/{phase}" for phase in PHASES} <= set(metrics)  # every phase, judge included (two judging rewards)
    for key in (
        "time/reward/self_judge",
        "time/reward/preference_reward",
        "time/reward/math_verifier",
        "reward/self_judge/parse_failure_rate",
        "reward/preference_reward/parse_failure_rate",
        "reward/length_penalty/chars_mean",
        "rows/open",
        "rows/preference",
        "rows/verifiable",
    ):
        assert key in metrics, key
    print({k: round(v, 4) for k, v in metrics.items() if k.startswith("time/")})


def scripted_reply(prompt: str, k: int) -> str:
    """Player answers and referee verdicts for the three rows of :func:`rows`, chosen by the sample index."""
    if "[Response A]" not in prompt:  # a player prompt
        return "The sum is \\boxed{4}" if "2 + 2" in prompt and k != 1 else f"answer {'x' * k} q={k}"
    if "Which is better?" in prompt:  # the preference row's judging task: right, wrong, malformed
        shown = shown_responses(prompt)
        worst_first = ranking(*[chr(65 + i) for i in sorted(range(len(shown)), key=lambda i: quality(shown[i]))])
        return [perfect_judge(prompt), worst_first, "no idea"][k % 3]
    return perfect_judge(prompt)  # self-judging of the open row's answers


@pytest.mark.parametrize("consistency", [False, True])
def test_scripted_step_rewards_every_kind_and_updates(tiny_model_dir: str, tmp_path, consistency: bool) -> None:
    engines: list[ScriptedEngine] = []

    def build(module: URPOModule) -> ScriptedEngine:
        engines.append(ScriptedEngine(scripted_reply, tokenizer=module.tokenizer))
        return engines[-1]

    preference = PreferenceReward(format_penalty=-0.5, consistency=consistency)
    rewards = [MathVerifier(), preference, SelfJudge(), LengthPenalty(per_char=0.0)]
    # One shared order per preference group, so the scripted judge's k-th sample is the group's k-th judgment.
    module = make_module(tiny_model_dir, rewards, engine_factory=build, preference_orders="shared")
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    metrics = fit_one_step(module, tmp_path)
    # The rollout, (the second judgments of the preference rows,) and ONE self-judging call.
    assert [n for _, n, _ in engines[-1].calls] == ([G, G, 1] if consistency else [G, 1])
    if consistency:  # the scripted judge is right, wrong, malformed in both orders: each parsed pair agrees
        assert metrics["reward/preference_reward/position_consistency"] == 1.0
    assert metrics["reward/preference_reward/referee_accuracy"] == 0.5  # one right, one wrong, one malformed
    assert metrics["reward/preference_reward/parse_failure_rate"] == pytest.approx(1 / 3)
    assert metrics["reward/preference_mean"] == pytest.approx((1.0 + 0.0 - 0.5) / 3)
    assert metrics["reward/verifiable_mean"] == pytest.approx(2 / 3)
    # Open answers have qualities 0, 1, 2: Borda 0, 1/2, 1.
    assert metrics["reward/open_mean"] == pytest.approx(0.5)
    assert metrics["reward/self_judge/score_spread"] == pytest.approx(math.sqrt(1 / 6))
    assert metrics["reward/self_judge/parse_failure_rate"] == 0.0
    assert changed_fraction(before, module.policy) > 0.5


@pytest.mark.parametrize("orders", ["shared", "mirrored"])
def test_mirrored_orders_give_a_position_biased_judge_a_learning_signal(tiny_model_dir: str, tmp_path, orders) -> None:
    # A referee that always names the first shown response: with one shared order its judgments of a row are all
    # right or all wrong (zero advantage); mirrored, the same bias is right for one half of the group only.
    engines: list[ScriptedEngine] = []

    def biased(prompt: str, k: int) -> str:
        return "<ranking>A > B</ranking>" if "[Response A]" in prompt else "\\boxed{4}"

    def build(module: URPOModule) -> ScriptedEngine:
        engines.append(ScriptedEngine(biased, tokenizer=module.tokenizer))
        return engines[-1]

    module = make_module(tiny_model_dir, [MathVerifier(), PreferenceReward(), SelfJudge()], build, orders)
    metrics = fit_one_step(module, tmp_path)
    assert engines[-1].calls[0][1] == (G if orders == "shared" else 1)  # the rollout: G of one prompt, or 1 of each
    assert metrics["groups/preference_zero_variance_frac"] == (1.0 if orders == "shared" else 0.0)
    # Mirrored with G = 3: two judgments see one order and one the reverse, so the bias scores 2/3 or 1/3.
    expected = [0.0, 1.0] if orders == "shared" else [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert metrics["reward/preference_mean"] in expected
