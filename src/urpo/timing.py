"""Wall-clock timing of the phases of a step, under the one set of phase names urpo uses everywhere.

A step renders the prompts (``render``), samples the player's completions (``rollout``), scores them with the reward
callbacks (``reward``; the referee's own generation inside them is ``judge``), turns rewards into group-relative
advantages (``advantage``), updates the policy (``update``) and logs what happened (``metrics``). Metrics files show
them as ``time/<phase>``; one reward callback's share of ``reward`` is ``time/reward/<callback name>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, get_args

from urpo import metric_keys as keys

Phase = Literal["render", "rollout", "judge", "reward", "advantage", "update", "metrics"]
PHASES: tuple[Phase, ...] = get_args(Phase)

_RUNNING: ContextVar[PhaseTimer | None] = ContextVar("urpo_phase_timer", default=None)


class PhaseTimer:
    """Accumulates seconds per phase; phases may nest (``judge`` and ``reward/<name>`` are part of ``reward``).

    A phase name is one of :data:`PHASES`, optionally followed by ``/detail``.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if phase.split("/", 1)[0] not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: a phase is one of {PHASES}, optionally followed by /detail")
        token = _RUNNING.set(self)  # code deeper in the call (a reward's judging) times into this step: see timed()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            _RUNNING.reset(token)

    def metrics(self, completion_tokens: float) -> dict[str, float]:
        """``time/<phase>`` seconds, the whole step, and completion tokens per second of the step and of the rollout."""
        step = time.perf_counter() - self._started
        out = {keys.phase_seconds(phase): seconds for phase, seconds in self.seconds.items()}
        out[keys.STEP_SECONDS] = step
        out[keys.TOKENS_PER_SECOND] = completion_tokens / step if step > 0 else 0.0
        if self.seconds.get("rollout"):
            out[keys.ROLLOUT_TOKENS_PER_SECOND] = completion_tokens / self.seconds["rollout"]
        return out


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Time ``phase`` in the step's timer when called inside one of its phases (a reward callback timing its
    referee's generation as ``judge``, without being handed the timer); outside a timed step it does nothing."""
    timer = _RUNNING.get()
    if timer is None:
        yield
        return
    with timer(phase):
        yield


__all__ = ["PHASES", "Phase", "PhaseTimer", "timed"]
