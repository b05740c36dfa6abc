"""DAPO dynamic sampling: over-sampled batches, all-equal groups dropped first, exact kind shares, counted."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.test_module import make_module, trainer
from urpo.data.datamodule import RowBatch, URPODataModule
from urpo.data.schema import OpenRow, VerifiableRow
from urpo.data.sources import SourceSpec
from urpo.dynamic_sampling import select_groups
from urpo.errors import ConfigError
from urpo.rewards.base import RewardCallback, RewardResult

NAN = math.nan
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "urpo" / "data" / "samples"
THREE_KINDS = [
    SourceSpec(adapter="gsm8k", path=str(SAMPLES / "gsm8k_train.jsonl")),
    SourceSpec(adapter="hh_rlhf", path=str(SAMPLES / "hh_rlhf_harmless_base_test.jsonl")),
    SourceSpec(adapter="instructions", path=str(SAMPLES / "alpaca_eval_instructions.jsonl")),
]


def test_all_equal_groups_are_dropped_first_and_each_kind_keeps_its_quota():
    kinds = ["verifiable"] * 4 + ["open"] * 3
    rewards = torch.tensor(
        [
            [1.0, 1.0, 1.0],  # 0: all equal
            [0.0, 1.0, 1.0],  # 1: informative
            [0.0, 0.0, 0.0],  # 2: all equal
            [1.0, 0.0, NAN],  # 3: informative (NaN is no reward, the rest differ)
            [0.5, 0.5, 0.5],  # 4: all equal
            [0.2, NAN, NAN],  # 5: one reward only: no advantage, counts as all equal
            [0.1, 0.9, 0.5],  # 6: informative
        ]
    )
    keep, metrics = select_groups(kinds, rewards, {"verifiable": 3, "open": 2})
    assert keep == [0, 1, 3, 4, 6]  # verifiable: informative 1, 3, then the first all-equal 0; open: 6, then 4
    assert Counter(kinds[i] for i in keep) == {"verifiable": 3, "open": 2}
    assert metrics == {
        "dynamic_sampling/verifiable_dropped": 1.0,
        "dynamic_sampling/verifiable_filled": 1.0,
        "dynamic_sampling/open_dropped": 1.0,
        "dynamic_sampling/open_filled": 1.0,
        "dynamic_sampling/dropped": 2.0,
        "dynamic_sampling/filled": 2.0,
    }


def test_extra_informative_groups_are_dropped_in_batch_order_and_nothing_is_filled():
    rewards = torch.tensor([[0.0, 1.0]] * 5)  # [5, 2]: all informative
    keep, metrics = select_groups(["preference"] * 5, rewards, {"preference": 3})
    assert keep == [0, 1, 2]
    assert metrics["dynamic_sampling/preference_dropped"] == 2.0
    assert metrics["dynamic_sampling/filled"] == 0.0


def test_a_kind_without_a_quota_keeps_every_group():
    keep, metrics = select_groups(["open", "open"], torch.zeros(2, 4), {"verifiable": 1})
    assert keep == [0, 1] and metrics["dynamic_sampling/dropped"] == 0.0


def test_the_data_module_over_samples_every_kind_and_marks_the_quotas():
    datamodule = URPODataModule(
        THREE_KINDS,
        mixture={"verifiable": 0.4, "preference": 0.3, "open": 0.3},
        batch_size=8,
        batches_per_epoch=3,
        oversample=1.5,
    )
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert isinstance(batch, RowBatch)
        assert batch.quotas == {"verifiable": 3, "preference": 3, "open": 2}
        assert Counter(row.kind for row in batch) == {"verifiable": 5, "preference": 5, "open": 3}  # ceil(1.5 x)


def test_without_over_sampling_batches_carry_no_quotas():
    datamodule = URPODataModule(THREE_KINDS, batch_size=6, batches_per_epoch=1)
    datamodule.setup("fit")
    (batch,) = list(datamodule.train_dataloader())
    assert batch.quotas is None and len(batch) == 6


@pytest.mark.parametrize("factor", [0.5, math.nan])
def test_over_sampling_below_one_is_a_config_error(factor):
    with pytest.raises(ConfigError, match="oversample"):
        URPODataModule(THREE_KINDS, oversample=factor)


class RewardByPrompt(RewardCallback):
    """Rows whose prompt says 'flat' get equal rewards; the others one reward per completion index."""

    default_kinds = ("verifiable", "open")

    def score(self, episodes):
        g = len(episodes[0].completions)
        values = [[0.5] * g if "flat" in e.row.prompt else [float(j) for j in range(g)] for e in episodes]
        return RewardResult(torch.tensor(values))


def record_trained_rows(module) -> list[list[str]]:
    """Wraps ``module.build_sequences`` to record the prompts of the rows each update is built from."""
    trained, original = [], module.build_sequences

    def build_sequences(episodes, rewards, advantages):
        trained.append([e.row.prompt for e in episodes])
        return original(episodes, rewards, advantages)

    module.build_sequences = build_sequences
    return trained


def test_a_training_step_updates_on_the_kept_groups_and_logs_the_drop(tiny_model_dir, tmp_path):
    L.seed_everything(0)
    rows = [
        VerifiableRow(source="t", index=0, prompt="flat 1", answer="1"),
        VerifiableRow(source="t", index=1, prompt="varied 2", answer="2"),
        VerifiableRow(source="t", index=2, prompt="flat 3", answer="3"),
        OpenRow(source="t", index=3, prompt="flat 4"),
        OpenRow(source="t", index=4, prompt="flat 5"),
    ]
    batch = RowBatch(rows, state={}, quotas={"verifiable": 2, "open": 1})
    module = make_module(tiny_model_dir, rewards=[RewardByPrompt()])
    trained = record_trained_rows(module)
    fit = trainer(1, tmp_path)
    fit.fit(module, DataLoader([batch], batch_size=None, collate_fn=lambda b: b))
    assert trained == [["flat 1", "varied 2", "flat 4"]]  # the informative group, then fills in batch order
    logged = fit.logged_metrics
    assert float(logged["dynamic_sampling/dropped"]) == 2.0
    assert float(logged["dynamic_sampling/verifiable_dropped"]) == 1.0
    assert float(logged["dynamic_sampling/filled"]) == 2.0
    # Reward metrics describe every sampled group: 4 of the 5 were all-equal.
    assert float(logged["groups/zero_variance_frac"]) == pytest.approx(0.8)
    assert float(logged["rows/verifiable"]) == 3.0
    # The per-kind view of the same loss of signal, logged every step.
    assert float(logged["groups/verifiable_zero_variance_frac"]) == pytest.approx(2 / 3)
    assert float(logged["groups/open_zero_variance_frac"]) == 1.0
    assert float(logged["reward/open_group_spread"]) == 0.0
    assert float(logged["reward/verifiable_group_spread"]) > 0.0
