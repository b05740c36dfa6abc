"""``ParseFailureWatch``: a run whose referee does not produce parsable verdicts says so instead of training on zeros.

When the referee's outputs fail to parse, preference rows all get the format penalty and open rows get no reward:
every advantage is 0 and the run learns nothing while looking healthy. The watch shows the step's parse-failure
share in the progress bar (``parse_fail``) and, once the share over a window of steps reaches a threshold, warns
once, naming the share, the steps and the referee template in use. :class:`~urpo.module.URPOModule` adds it to
every Trainer through ``configure_callbacks`` (settings in ``model.logging``).
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from urpo.errors import ConfigError

# The referee's own verdicts: PreferenceReward's first judgments and SelfJudge's judgments of open rows.
PARSE_RATE = re.compile(r"^reward/(?P<callback>[^/]+)/parse_failure_rate$")


def step_parse_failures(metrics: dict[str, Any]) -> dict[str, float]:
    """The parse-failure share of each referee callback in one step's logged metrics (callbacks with no verdicts
    this step, whose share is NaN, are left out)."""
    out = {}
    for key, value in metrics.items():
        match = PARSE_RATE.match(key)
        if match:
            share = float(value)
            if math.isfinite(share):
                out[match.group("callback")] = share
    return out


class ParseFailureWatch(Callback):
    """Shows the referee's parse-failure share in the progress bar and warns once when it stays high.

    Args:
        after_steps: the window, in training steps: from this many steps on, the mean share of the last
            ``after_steps`` steps is checked after every step. None turns the warning off (the bar still shows it).
        share: the warning fires when that mean reaches this share (in (0, 1]).
    """

    def __init__(self, after_steps: int | None = 5, share: float = 0.9) -> None:
        if after_steps is not None and after_steps < 1:
            raise ConfigError(f"parse_warning_after_steps must be >= 1 or None, got {after_steps}")
        if not 0 < share <= 1:
            raise ConfigError(f"parse_warning_share must be in (0, 1], got {share}")
        self.after_steps, self.share = after_steps, share
        self.window: deque[float] = deque(maxlen=after_steps or 1)
        self.steps = 0
        self.warning: str | None = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        shares = step_parse_failures(trainer.callback_metrics)
        if not shares:
            return  # no referee verdicts this step (no preference or open rows in the batch)
        step_share = sum(shares.values()) / len(shares)
        pl_module.log("parse_fail", step_share, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch))
        self.steps += 1
        self.window.append(step_share)
        if self.warning is None and self.after_steps is not None and self.steps >= self.after_steps:
            mean = sum(self.window) / len(self.window)
            if mean >= self.share:
                self.warning = self.message(mean, sorted(shares), pl_module.referee)
                rank_zero_warn(self.warning)

    def message(self, mean: float, callbacks: list[str], template: Any) -> str:
        """The warning: the share, over which steps and callbacks, and the template that produced it."""
        return (
            f"urpo: {mean:.0%} of the referee's outputs failed to parse over the last {len(self.window)} steps "
            f"({', '.join(callbacks)}; see their parse_failure_rate and parse_failure/* metrics): judged rows get "
            f"only format penalties or no reward, so their advantages are 0 and they teach nothing. Template in use: "
            f"{template.summary()}. Read the judgments in samples.jsonl, then adapt model.referee or "
            "sampling.max_new_tokens (docs/referee.md)."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "steps": self.steps, "warned": self.warning is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.extend(state.get("window", []))
        self.steps = state.get("steps", 0)
        if state.get("warned"):
            self.warning = "(warned before the checkpoint)"


__all__ = ["PARSE_RATE", "ParseFailureWatch", "step_parse_failures"]
