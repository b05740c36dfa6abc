"""Wall-clock timing of the phases of a step (generate, score, each reward, update)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from urpo import metric_keys as keys


class PhaseTimer:
    """Accumulates seconds per named phase; phases may nest (a reward's time is part of 'score')."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self, completion_tokens: float) -> dict[str, float]:
        """``time/<phase>`` seconds, the whole step, and completion tokens per second of the step."""
        step = time.perf_counter() - self._started
        out = {keys.phase_seconds(phase): seconds for phase, seconds in self.seconds.items()}
        out[keys.STEP_SECONDS] = step
        out[keys.TOKENS_PER_SECOND] = completion_tokens / step if step > 0 else 0.0
        if self.seconds.get("generate"):
            out[keys.GENERATE_TOKENS_PER_SECOND] = completion_tokens / self.seconds["generate"]
        return out
