"""Reward callbacks: :class:`MathVerifier` (verifiable rows), :class:`PreferenceReward` (preference rows, the referee
trained against gold orders) and :class:`SelfJudge` (open rows, judged by the model itself)."""

from __future__ import annotations

import importlib
from typing import Any

from urpo.episode import Episode
from urpo.rewards.base import RewardCallback, RewardContext, RewardResult

_LAZY = {
    "MathVerifier": "urpo.rewards.verifier",
    "PreferenceReward": "urpo.rewards.preference",
    "SelfJudge": "urpo.rewards.self_judge",
}

__all__ = ["Episode", "RewardCallback", "RewardContext", "RewardResult", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urpo.rewards' has no attribute {name!r}")
