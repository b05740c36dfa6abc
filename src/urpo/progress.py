"""Guard against silent non-progress: batches that end without an optimizer step.

A batch whose completions all lack a reward has nothing to train on, and a batch whose gradient is not finite is
skipped; neither advances Lightning's ``global_step`` (urpo optimizes manually, and a step is an optimizer step), so a
reward that never yields a usable signal would keep a run sampling forever without reaching ``max_steps``, writing a
checkpoint or saying a word. The guard counts such batches in a row and stops the run with one line saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from urpo import metric_keys as keys
from urpo.errors import StalledRunError

EMPTY = "empty"
"""Outcome of a batch in which no completion got a reward: the update had nothing to train on."""
NON_FINITE = "non-finite"
"""Outcome of a batch whose gradient norm was inf or NaN: the optimizer step was skipped."""


def outcome(update_metrics: dict[str, float], skipped_optimizer_steps: int, num_iterations: int) -> str | None:
    """How a batch's update ended: None if it made an optimizer step, else :data:`EMPTY` or :data:`NON_FINITE`."""
    if keys.EMPTY_UPDATES in update_metrics:
        return EMPTY
    return NON_FINITE if skipped_optimizer_steps >= num_iterations else None


@dataclass
class ProgressGuard:
    """Counts consecutive batches without an optimizer step and raises :class:`StalledRunError` at ``limit``.

    Args:
        limit: how many such batches in a row stop the run (None: never; a run can then sample forever).
    """

    limit: int | None
    stalled: int = 0
    missing: list[float] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    def record(self, outcome: str | None, missing_frac: float, reward_names: Sequence[str]) -> None:
        """Note one batch: ``outcome`` is None when it stepped, else :data:`EMPTY` or :data:`NON_FINITE`."""
        if outcome is None:
            self.stalled, self.missing, self.outcomes = 0, [], []
            return
        self.stalled += 1
        self.missing.append(missing_frac)
        self.outcomes.append(outcome)
        if self.limit is not None and self.stalled >= self.limit:
            raise StalledRunError(self.message(reward_names))

    def message(self, reward_names: Sequence[str]) -> str:
        missing = sum(self.missing) / len(self.missing)
        shown = f"{missing:.0%}" if math.isfinite(missing) else "unknown"
        if NON_FINITE in self.outcomes:
            cause = (
                "the gradient was not finite: a reward or advantage too large, or a loss setting that overflows "
                "(try precision 32 or a lower learning rate)"
            )
        else:
            cause = (
                "every completion lacked a reward (NaN): a judge whose output never parses, or a reward callback "
                "that fails on these rows; check samples.jsonl and the callback"
            )
        return (
            f"training stalled: {self.stalled} batches in a row ended without an optimizer step "
            f"(grpo.max_stalled_steps={self.limit}); reward callbacks {list(reward_names)}; "
            f"{shown} of rewards missing; likely cause: {cause}"
        )


__all__ = ["EMPTY", "NON_FINITE", "ProgressGuard", "outcome"]
