"""Checks run at setup, after the data is read and before the model loads (minutes on a large model).

``URPOModule.setup`` and ``urpo data`` call :func:`check_rewards_serve_data`: a row kind in the data that no reward
callback serves would otherwise be found inside the first training step, after a batch was generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from urpo.errors import ConfigError


def kinds_in_data(datamodule: Any, stage: str | None) -> set[str]:
    """The row kinds ``stage`` will train or evaluate on, as the DataModule reports them
    (:meth:`~urpo.data.datamodule.URPODataModule.row_kinds`); none for a DataModule that does not say."""
    row_kinds = getattr(datamodule, "row_kinds", None)
    return set(row_kinds(stage)) if row_kinds is not None else set()


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
