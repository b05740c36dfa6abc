"""URPOModule on a tiny random model: one step really trains, learning raises reward, invariants hold."""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, SamplingArgs
from urpo.data.schema import VerifiableRow
from urpo.episode import TrainSequence
from urpo.errors import ConfigError
from urpo.module import URPOModule
from urpo.rewards.base import RewardCallback, RewardResult
from urpo.update import sequences_with_gradient


class TargetTokenReward(RewardCallback):
    """Toy verifiable reward: the share of completion tokens that fall in a fixed set of token ids."""

    default_kinds = ("verifiable",)

    def __init__(self, targets: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.targets = set(targets)

    def score(self, episodes):
        shares = [
            [sum(t in self.targets for t in ids) / max(len(ids), 1) for ids in e.completion_ids] for e in episodes
        ]
        return RewardResult(torch.tensor(shares), {"target_share": float(torch.tensor(shares).mean())})


class ConstantReward(RewardCallback):
    default_kinds = ("verifiable",)

    def __init__(self, value: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.value = value

    def score(self, episodes):
        g = len(episodes[0].completions)
        values = torch.full((len(episodes), g), self.value)
        values[:, 0] = 0.0  # keep a non-constant group so advantages are not all zero
        return RewardResult(values)


def rows(n: int = 8) -> list[VerifiableRow]:
    return [VerifiableRow(source="toy", index=i, prompt=f"What is {i} + 1?", answer=str(i + 1)) for i in range(n)]


def loader(batch_rows: list, batches: int) -> DataLoader:
    return DataLoader([batch_rows] * batches, batch_size=None, collate_fn=lambda b: b)


def make_module(model_dir: str, rewards=None, lr: float = 1e-3, **grpo) -> URPOModule:
    grpo_args = GRPOArgs(**{"num_generations": 4, **grpo})
    return URPOModule(
        policy=PolicyArgs(name_or_path=model_dir),
        rewards=rewards,
        grpo=grpo_args,
        sampling=SamplingArgs(max_new_tokens=12),
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )


def trainer(steps: int, tmp_path=None, **kwargs) -> L.Trainer:
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path)) if tmp_path is not None else False
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def test_one_step_changes_every_trainable_parameter_and_not_the_reference(tiny_model_dir, tmp_path):
    L.seed_everything(0)
    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)], beta=0.1)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    reference_before = {n: p.detach().clone() for n, p in module.reference.named_parameters()}
    fit = trainer(1, tmp_path)
    fit.fit(module, loader(rows(4), 1))
    changed = [n for n, p in module.policy.named_parameters() if not torch.equal(before[n], p.detach())]
    assert sorted(changed) == sorted(before), f"unchanged: {set(before) - set(changed)}"
    for name, param in module.reference.named_parameters():
        assert torch.equal(reference_before[name], param), name
    logged = fit.logged_metrics
    for key in (
        "reward/mean",
        "train/loss",
        "train/kl",
        "train/entropy",
        "train/grad_norm",
        "time/rollout",
        "completion/length_mean",
        "completion/truncated_frac",
        "groups/zero_variance_frac",
        "train/lr",
    ):
        assert key in logged and math.isfinite(float(logged[key])), key
    assert float(logged["rows/verifiable"]) == 4.0


def test_beta_zero_builds_no_reference(tiny_model_dir):
    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)])
    module.configure_model()
    assert module.reference is None


def test_learning_raises_a_toy_reward(tiny_model_dir):
    """With a fixed seed, a few dozen GRPO steps clearly raise the share of 'target' tokens in completions."""
    L.seed_everything(0)
    module = make_module(tiny_model_dir, rewards=[TargetTokenReward(list(range(3, 60)))], lr=3e-3, num_generations=8)
    fit = trainer(30)
    history = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            history.append(float(trainer.logged_metrics["reward/mean"]))

    fit.callbacks.append(Record())
    fit.fit(module, loader(rows(4), 30))
    start, end = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert end > start + 0.25, (start, end, history)


def _sequences(advantages: list[float]) -> list[TrainSequence]:
    """Training sequences of different prompt and completion lengths, one per advantage, 4 to a group."""
    return [
        TrainSequence(
            prompt_ids=[5, 6, 7][: 1 + i % 3],
            completion_ids=list(range(10, 12 + i)),
            advantage=a,
            episode=i // 4,
            sample=i % 4,
        )
        for i, a in enumerate(advantages)
    ]


def _attached_module(model_dir: str, optimizer, lora=None, **grpo) -> URPOModule:
    """A module with its policy (with ``lora``: a ``LoraArgs``, adapters), ``optimizer`` (a factory) and a Trainer
    attached, ready for ``update``."""
    L.seed_everything(0)
    module = make_module(model_dir, rewards=[ConstantReward(1.0)], max_grad_norm=None, **grpo)
    if lora is not None:
        module.policy_args = dataclasses.replace(module.policy_args, lora=lora)
    module.optimizer_factory = optimizer
    module.configure_model()
    fit = trainer(1)
    fit.strategy.connect(module)
    fit.strategy._lightning_module = module
    module.trainer = fit
    fit.strategy.setup_optimizers(fit)
    return module


def test_micro_batch_split_does_not_change_the_update(tiny_model_dir):
    """One micro-batch of 8 sequences and 8 micro-batches of 1 give the same SGD step (token_mean aggregation) and
    log the same loss (the sum of the micro-batches' contributions)."""
    sequences = _sequences([(-1) ** i * 0.5 for i in range(8)])
    results = []
    for budget in (10_000, 1):
        module = _attached_module(
            tiny_model_dir, lambda params: torch.optim.SGD(params, lr=1.0), max_tokens_per_micro_batch=budget
        )
        stats = module.update(sequences)
        results.append((stats["train/loss"], [p.detach().clone() for p in module.policy.parameters()]))
    (loss_a, params_a), (loss_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _sgd_with_momentum(params):
    """A step on zero gradients still moves the weights (momentum, decay), and unlike Adam, float rounding in
    near-zero gradients is not blown up to full-size steps, so updates can be compared closely."""
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.1)


def test_skipping_zero_advantage_completions_does_not_change_the_update(tiny_model_dir):
    """Zero-advantage completions have an exactly zero gradient (beta = 0): leaving them out of the forward/backward
    while counting their tokens gives the same optimizer steps, including a step where every advantage is 0."""
    steps = [_sequences([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), _sequences([0.0] * 8)]
    results = []
    for skip in (True, False):
        module = _attached_module(tiny_model_dir, _sgd_with_momentum, skip_zero_advantage=skip)
        stats = [module.update(step) for step in steps]
        results.append(([p.detach().clone() for p in module.policy.parameters()], stats))
    (params_skip, stats_skip), (params_full, stats_full) = results
    assert [s["train/zero_advantage_skipped"] for s in stats_skip] == [6.0, 8.0]
    assert [s["train/zero_advantage_skipped"] for s in stats_full] == [0.0, 0.0]
    assert stats_skip[0]["train/loss"] == pytest.approx(stats_full[0]["train/loss"], rel=1e-5, abs=1e-7)
    assert stats_skip[1]["train/loss"] == stats_full[1]["train/loss"] == 0.0
    for a, b in zip(params_skip, params_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    module = _attached_module(tiny_model_dir, _sgd_with_momentum)
    before = [p.detach().clone() for p in module.policy.parameters()]
    module.update(steps[1])  # all zero on a fresh optimizer: only weight decay moves the weights
    changed = 0
    for a, b in zip(before, module.policy.parameters()):
        changed += not torch.equal(a, b.detach())
        torch.testing.assert_close(b.detach(), a * (1 - 1e-2 * 0.1))
    assert changed > 0


def test_zero_advantage_completions_are_trained_when_a_kl_term_needs_them(tiny_model_dir):
    module = make_module(tiny_model_dir, beta=0.1)
    sequences = [TrainSequence([5], [10, 11], 0.0, 0, 0), TrainSequence([5], [12, 13], 1.0, 0, 1)]
    assert sequences_with_gradient(sequences, module.grpo) == sequences
    module = make_module(tiny_model_dir)
    with_engine = [dataclasses.replace(s, engine_logprobs=[0.1 * s.sample, 0.2]) for s in sequences]
    assert sequences_with_gradient(with_engine, module.grpo) == [with_engine[1]]
    assert with_engine[1].engine_logprobs == [0.1, 0.2]  # the engine's log-probs travel with their sequence


def test_non_finite_step_is_skipped_and_counted(tiny_model_dir, tmp_path):
    # An infinite reward is now refused at the reward boundary (tests/test_progress.py); poison a gradient instead.
    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)])
    module.configure_model()
    next(module.policy.parameters()).register_hook(lambda grad: grad * float("nan"))
    before = [p.detach().clone() for p in module.policy.parameters()]
    fit = trainer(1, tmp_path, max_epochs=1)
    fit.fit(module, loader(rows(2), 1))
    assert module.skipped_steps == 1
    assert float(fit.logged_metrics["train/skipped_steps"]) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))


def test_a_kind_without_reward_callback_is_a_clear_error(tiny_model_dir):
    from urpo.data.schema import OpenRow

    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)])
    module.configure_model()
    with pytest.raises(ConfigError, match="no reward callback serves row kind"):
        fit = trainer(1)
        fit.fit(module, loader([OpenRow(source="s", index=0, prompt="Write a poem.")], 1))


def test_missing_model_path_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        URPOModule(policy=PolicyArgs(name_or_path=str(tmp_path / "nope")))


def test_gradient_checkpointing_trains_the_same_way(tiny_model_dir):
    """Recomputing activations changes memory, not the update: one fixed-seed step matches without it."""
    results = []
    for checkpointing in (False, True):
        L.seed_everything(0)
        module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)])
        module.policy_args = dataclasses.replace(module.policy_args, gradient_checkpointing=checkpointing)
        trainer(1).fit(module, loader(rows(2), 1))
        assert module.policy.is_gradient_checkpointing == checkpointing
        results.append([p.detach().clone() for p in module.policy.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
