"""A run whose referee writes no parsable verdicts says so in the progress bar and warns, naming share and template."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch

from tests.test_module import loader, make_module, rows, trainer
from urpo.args import LoggingArgs
from urpo.data.schema import PreferenceRow
from urpo.errors import ConfigError
from urpo.referee_watch import ParseFailureWatch, step_parse_failures
from urpo.rewards import PreferenceReward
from urpo.rewards.base import RewardCallback, RewardResult


class FixedParseRate(RewardCallback):
    """A verifiable-row reward that reports a fixed referee parse-failure share (rewards vary, so steps train)."""

    default_kinds = ("verifiable",)

    def __init__(self, rate: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate

    def score(self, episodes):
        values = torch.arange(len(episodes[0].completions), dtype=torch.float32).repeat(len(episodes), 1)
        return RewardResult(values, {"parse_failure_rate": self.rate})


def fit(module, steps: int, tmp_path: Path, batch) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = trainer(steps, tmp_path)
        run.fit(module, loader(batch, steps))
    module.run = run
    return [w for w in caught if "failed to parse" in str(w.message)]


def with_watch(module, after_steps: int | None, share: float = 0.9):
    module.logging_args = LoggingArgs(
        samples_every_n_steps=0, export_dir=None, parse_warning_after_steps=after_steps, parse_warning_share=share
    )
    return module


def logged(tmp_path: Path, name: str) -> list[float]:
    (metrics,) = tmp_path.rglob("metrics.csv")
    with metrics.open() as handle:
        return [float(r[name]) for r in csv.DictReader(handle) if r.get(name)]


def test_only_the_referees_own_parse_shares_are_read():
    metrics = {
        "reward/preference_reward/parse_failure_rate": torch.tensor(1.0),
        "reward/self_judge/parse_failure_rate": torch.tensor(math.nan),  # no open rows this step
        "reward/preference_reward/second_parse_failure_rate": torch.tensor(0.0),
        "reward/self_judge/cross_check/parse_failure_rate": 0.0,
        "reward/mean": 0.3,
    }
    assert step_parse_failures(metrics) == {"preference_reward": 1.0}


def test_a_referee_that_never_parses_is_reported_in_the_bar_and_warned_once(tiny_model_dir, tmp_path):
    # A random tiny model never writes a <ranking> block: every judgment of every step fails to parse.
    module = with_watch(make_module(tiny_model_dir, rewards=[PreferenceReward()]), after_steps=2)
    batch = [
        PreferenceRow(source="t", index=i, prompt=f"What is {i} + 1?", responses=(str(i + 1), "7"), scores=(1.0, 0.0))
        for i in range(2)
    ]
    caught = fit(module, 3, tmp_path, batch)
    assert len(caught) == 1, [str(w.message) for w in caught]  # once, not every step
    message = str(caught[0].message)
    assert "100% of the referee's outputs failed to parse over the last 2 steps (preference_reward;" in message
    assert "RefereeTemplate(format <ranking>...</ranking>, ties not allowed" in message
    assert module.run.progress_bar_metrics["parse_fail"] == 1.0
    assert logged(tmp_path, "parse_fail") == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("rate", "warned"), [(0.95, True), (0.5, False)])
def test_the_warning_needs_the_share_over_the_window(tiny_model_dir, tmp_path, rate, warned):
    module = with_watch(make_module(tiny_model_dir, rewards=[FixedParseRate(rate, name="judge")]), after_steps=2)
    caught = fit(module, 2, tmp_path, rows(2))
    assert bool(caught) is warned
    assert logged(tmp_path, "parse_fail") == pytest.approx([rate, rate])  # logged as float32
    if warned:
        assert "95% of the referee's outputs failed to parse over the last 2 steps (judge;" in str(caught[0].message)


def test_no_warning_before_the_window_is_full_or_when_turned_off(tiny_model_dir, tmp_path):
    early = with_watch(make_module(tiny_model_dir, rewards=[FixedParseRate(1.0, name="judge")]), after_steps=3)
    assert not fit(early, 2, tmp_path / "early", rows(2))
    off = with_watch(make_module(tiny_model_dir, rewards=[FixedParseRate(1.0, name="judge")]), after_steps=None)
    assert not fit(off, 2, tmp_path / "off", rows(2))
    assert logged(tmp_path / "off", "parse_fail") == [1.0, 1.0]  # the bar still shows the share


@pytest.mark.parametrize(("after", "share"), [(0, 0.9), (2, 0.0), (2, 1.5)])
def test_bad_watch_settings_fail_at_config_time(after, share):
    with pytest.raises(ConfigError, match="parse_warning"):
        LoggingArgs(parse_warning_after_steps=after, parse_warning_share=share)
    with pytest.raises(ConfigError, match="parse_warning"):
        ParseFailureWatch(after, share)
