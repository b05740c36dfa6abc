"""Checks run at setup, after the data is read and before the model loads (minutes on a large model).

``URPOModule.setup`` and ``urpo data`` call :func:`check_rewards_serve_data`: a row kind in the data that no reward
callback serves would otherwise be found inside the first training step, after a batch was generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from urpo.errors import ConfigError


def kinds_in_data(datamodule: Any, stage: str | None) -> set[str]:
    """The row kinds ``stage`` will train or evaluate on: the mixture's kinds for fit, the rows' kinds otherwise."""
    if datamodule is None:
        return set()
    kinds: set[str] = set()
    if stage in (None, "fit"):
        kinds |= set(getattr(datamodule, "quotas", {}) or {})
    split = {"validate": "val", "test": "test"}.get(stage or "")
    for name, rows in (getattr(datamodule, "_eval_rows", {}) or {}).items():
        if split is None or name == split:
            kinds |= {row.kind for row in rows}
    return kinds


def check_rewards_serve_data(rewards: Sequence[Any], kinds: Iterable[str]) -> None:
    """Raise :class:`ConfigError` naming every kind of ``kinds`` that no callback in ``rewards`` serves."""
    served = {kind for reward in rewards for kind in reward.kinds}
    missing = sorted(set(kinds) - served)
    if missing:
        names = {reward.name: list(reward.kinds) for reward in rewards}
        raise ConfigError(
            f"the data holds {missing} rows but no reward callback serves them (model.rewards: {names}); add a reward "
            "for those kinds (MathVerifier: verifiable, PreferenceReward: preference, SelfJudge: open) or remove "
            "them from data.sources/data.mixture"
        )


__all__ = ["check_rewards_serve_data", "kinds_in_data"]
