"""The step's phase timer: one set of phase names, nested phases, and timing from deeper in the call."""

import time

import pytest

from urpo.timing import PHASES, PhaseTimer, timed


def test_the_phases_of_a_step_are_the_seven_documented_ones():
    assert PHASES == ("render", "rollout", "judge", "reward", "advantage", "update", "metrics")


def test_a_phase_outside_the_set_is_refused():
    timer = PhaseTimer()
    with pytest.raises(ValueError, match="generate"), timer("generate"):
        pass
    with timer("reward/self_judge"):  # a detail of a known phase is fine
        pass
    assert set(timer.seconds) == {"reward/self_judge"}


def test_timed_lands_in_the_running_phase_timer_and_is_a_no_op_outside_one():
    with timed("judge"):  # no step running: nothing to record, nothing raised
        pass
    timer = PhaseTimer()
    with timer("reward"), timer("reward/self_judge"):
        with timed("judge"):
            pass
        with timed("judge"):
            pass
    with timed("judge"):  # after the step's phases: not recorded
        pass
    assert set(timer.seconds) == {"reward", "reward/self_judge", "judge"}
    assert timer.seconds["judge"] <= timer.seconds["reward/self_judge"] <= timer.seconds["reward"]


def test_metrics_name_every_phase_timed_and_the_rollout_throughput():
    timer = PhaseTimer()
    for phase in PHASES:
        with timer(phase):
            time.sleep(0.01 if phase == "rollout" else 0.0)
    metrics = timer.metrics(completion_tokens=100.0)
    assert {f"time/{phase}" for phase in PHASES} | {"time/step", "throughput/tokens_per_s"} <= set(metrics)
    assert metrics["throughput/rollout_tokens_per_s"] == pytest.approx(100.0 / metrics["time/rollout"])
    assert metrics["time/step"] >= metrics["time/rollout"] >= 0.01
