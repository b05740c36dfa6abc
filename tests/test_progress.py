"""No silent non-progress: batches without an optimizer step stop the run after a bound, with one line saying why;
rewards the loss cannot use are refused at the callback boundary, naming the callback."""

from __future__ import annotations

import pytest
import torch

from tests.fault_rewards import AlwaysNaN, OneInfinite, PlainList
from tests.test_module import ConstantReward, loader, make_module, rows, trainer
from urpo.errors import RewardError, StalledRunError
from urpo.progress import EMPTY, NON_FINITE, ProgressGuard


def test_guard_counts_only_consecutive_stalls_and_names_the_cause():
    guard = ProgressGuard(limit=3)
    guard.record(EMPTY, 1.0, ["judge"])
    guard.record(EMPTY, 1.0, ["judge"])
    guard.record(None, 0.0, ["judge"])  # a real step resets the count
    guard.record(EMPTY, 1.0, ["judge"])
    guard.record(EMPTY, 0.5, ["judge"])
    with pytest.raises(StalledRunError) as error:
        guard.record(EMPTY, 1.0, ["judge"])
    message = str(error.value)
    assert "\n" not in message
    assert "3 batches in a row" in message and "['judge']" in message and "83% of rewards missing" in message
    assert "never parses" in message
    with pytest.raises(StalledRunError, match="gradient was not finite"):
        ProgressGuard(limit=1).record(NON_FINITE, 0.0, ["r"])
    unbounded = ProgressGuard(limit=None)
    for _ in range(100):
        unbounded.record(EMPTY, 1.0, ["r"])


def test_a_reward_that_never_scores_stops_the_run_instead_of_hanging(tiny_model_dir, tmp_path):
    module = make_module(tiny_model_dir, rewards=[AlwaysNaN(name="never_parses")], max_stalled_steps=3)
    fit = trainer(2, tmp_path)  # two optimizer steps that can never happen: this used to loop forever
    with pytest.raises(StalledRunError, match=r"3 batches in a row.*\['never_parses'\]; 100% of rewards missing"):
        fit.fit(module, loader(rows(2), 50))
    assert fit.global_step == 0 and module.progress.stalled == 3


def test_non_finite_gradients_stop_the_run_after_the_bound(tiny_model_dir, tmp_path):
    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)], max_stalled_steps=2)
    module.configure_model()
    next(module.policy.parameters()).register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(StalledRunError, match="gradient was not finite"):
        trainer(2, tmp_path).fit(module, loader(rows(2), 50))
    assert module.skipped_steps == 2


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (OneInfinite(name="blows_up"), r"'blows_up' \(OneInfinite\): reward inf for completion 0 of toy row 0"),
        (PlainList(name="listy"), r"'listy' \(PlainList\): score\(\) must return a RewardResult, got list"),
    ],
)
def test_unusable_rewards_are_refused_naming_the_callback(tiny_model_dir, tmp_path, reward, message):
    module = make_module(tiny_model_dir, rewards=[reward])
    with pytest.raises(RewardError, match=message):
        trainer(1, tmp_path).fit(module, loader(rows(2), 1))


def test_a_nan_reward_is_still_allowed_as_no_reward(tiny_model_dir):
    from urpo.rewards.base import RewardResult, checked_result

    module = make_module(tiny_model_dir, rewards=[ConstantReward(1.0)])
    episodes = [module.render(row, None) for row in rows(1)]
    result = RewardResult(torch.tensor([[float("nan"), 1.0, 0.0, 2.0]]))
    assert checked_result(module.rewards[0], result, episodes, 4) is result
    with pytest.raises(RewardError, match=r"shape \(1, 3\), expected \(1, 4\)"):
        checked_result(module.rewards[0], RewardResult(torch.zeros(1, 3)), episodes, 4)


def test_outcome_of_an_update():
    from urpo.progress import outcome

    assert outcome({"train/empty_updates": 1.0}, 0, 1) == EMPTY
    assert outcome({"train/grad_norm": float("nan")}, 1, 1) == NON_FINITE
    assert outcome({"train/grad_norm": 0.5}, 1, 2) is None  # one of two optimizer steps happened: progress
    assert outcome({"train/grad_norm": 0.5}, 0, 1) is None
