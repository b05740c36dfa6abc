"""The argument groups (urpo.args): documented keys, ConfigError naming the key, and the one-seed rule."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import random
from pathlib import Path

import lightning as L
import pytest

from urpo import args
from urpo.args import (
    GRPOArgs,
    LoggingArgs,
    LoraArgs,
    PolicyArgs,
    QuantizationArgs,
    RolloutArgs,
    RolloutCorrectionArgs,
    SamplingArgs,
    VLLMArgs,
    run_seed,
)
from urpo.errors import ConfigError
from urpo.referee import RefereeTemplate

GROUPS = [cls for cls in vars(args).values() if dataclasses.is_dataclass(cls) and cls.__module__ == "urpo.args"]


def test_every_field_of_every_group_has_a_docstring():
    """Each key's docstring is its ``urpo fit --help`` line (litgpt's convention)."""
    tree = ast.parse(Path(args.__file__).read_text())
    undocumented = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for i, item in enumerate(body):
                if isinstance(item, ast.AnnAssign):
                    following = body[i + 1] if i + 1 < len(body) else None
                    documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    if not documented:
                        undocumented.append(f"{node.name}.{item.target.id}")
    assert len(GROUPS) >= 10
    assert undocumented == []


def test_the_module_takes_ten_groups():
    from urpo.module import URPOModule

    names = list(inspect.signature(URPOModule.__init__).parameters)[1:]
    groups = ["policy", "rewards", "grpo", "sampling", "rollout", "player", "referee", "optimizer", "lr_scheduler"]
    assert names == [*groups, "logging"]


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: GRPOArgs(num_generations=1), "model.grpo.num_generations"),
        (lambda: GRPOArgs(epsilon_low=1.0), "model.grpo.epsilon_low"),
        (lambda: GRPOArgs(max_grad_norm=0.0), "model.grpo.max_grad_norm"),
        (lambda: GRPOArgs(max_stalled_steps=0), "model.grpo.max_stalled_steps"),
        (lambda: GRPOArgs(num_iterations=0), "model.grpo.num_iterations"),
        (lambda: GRPOArgs(beta=-0.1), "model.grpo.beta"),
        (lambda: GRPOArgs(epsilon_high=-0.1), "model.grpo.epsilon_high"),
        (lambda: GRPOArgs(dual_clip=1.0), "model.grpo.dual_clip"),
        (lambda: GRPOArgs(max_tokens_per_micro_batch=0), "model.grpo.max_tokens_per_micro_batch"),
        (lambda: SamplingArgs(max_new_tokens=0), "model.sampling.max_new_tokens"),
        (lambda: SamplingArgs(temperature=0.0), "model.sampling.temperature"),
        (lambda: SamplingArgs(top_p=1.5), "model.sampling.top_p"),
        (lambda: VLLMArgs(gpu_memory_utilization=0.0), "model.rollout.vllm.gpu_memory_utilization"),
        (lambda: VLLMArgs(kv_cache_memory_bytes=0), "model.rollout.vllm.kv_cache_memory_bytes"),
        (lambda: RolloutCorrectionArgs(cap_max=0.0), "model.rollout.correction.cap_max"),
        (lambda: RolloutCorrectionArgs(cap_min=3.0, cap_max=2.0), "model.rollout.correction.cap_min"),
        (lambda: LoraArgs(r=0), "model.policy.lora.r"),
        (lambda: PolicyArgs("m", quantization=QuantizationArgs()), "model.policy.lora"),
        (lambda: LoggingArgs(parse_warning_share=0.0), "model.logging.parse_warning_share"),
        (lambda: LoggingArgs(parse_warning_after_steps=0), "model.logging.parse_warning_after_steps"),
        (lambda: RefereeTemplate(max_response_chars=0), "max_response_chars"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_its_key(build, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build()


def test_config_error_stays_a_value_error():
    """Callers that caught ValueError from the settings groups still catch ConfigError."""
    assert issubclass(ConfigError, ValueError)


def test_policy_holds_lora_quantization_and_checkpointing_and_loads_like_model_args():
    policy = PolicyArgs("m", gradient_checkpointing=True, lora=LoraArgs(r=4), quantization=QuantizationArgs())
    assert isinstance(policy, args.ModelArgs)  # the loaders (urpo.models) take it as it is
    assert (policy.lora.r, policy.quantization.bits, policy.gradient_checkpointing) == (4, 4, True)
    rollout = RolloutArgs(engine="vllm")
    assert rollout.vllm == VLLMArgs() and rollout.correction == RolloutCorrectionArgs()


def test_the_run_seed_is_seed_everythings_and_zero_without_it(monkeypatch):
    assert run_seed() == 0  # conftest: every test starts unseeded
    L.seed_everything(1234)
    assert run_seed() == 1234
    monkeypatch.setenv("PL_GLOBAL_SEED", "not a number")
    with pytest.raises(ConfigError, match="PL_GLOBAL_SEED"):
        run_seed()


def test_every_random_stream_derives_from_seed_everything(tiny_model_dir):
    from urpo.data.datamodule import URPODataModule
    from urpo.data.sources import SourceSpec
    from urpo.module import URPOModule
    from urpo.rewards import PreferenceReward, SelfJudge

    source = [SourceSpec(adapter="gsm8k", path="src/urpo/data/samples/gsm8k_train.jsonl")]
    streams = {}
    for seed in (7, 7, 8):
        L.seed_everything(seed)
        module = URPOModule(PolicyArgs(tiny_model_dir), rewards=[PreferenceReward(), SelfJudge()])
        data = URPODataModule(source, batch_size=2)
        assert module.seed == data.seed == seed
        draws = tuple(reward.rng.random() for reward in module.rewards)
        assert draws == tuple(random.Random(seed).random() for _ in module.rewards)
        streams.setdefault(seed, []).append(draws)
    assert streams[7][0] == streams[7][1] != streams[8][0]
    L.seed_everything(8)
    assert PreferenceReward(seed=3).rng.random() == random.Random(3).random()  # an explicit seed still wins
