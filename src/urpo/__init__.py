"""urpo: Unified Reward & Policy Optimization (arXiv 2507.17515) on PyTorch Lightning.

One language model is trained at once as the player (the policy) and the referee (its own reward model), in one
GRPO loop, on batches that mix verifiable problems, preference rankings and open-ended instructions.

The public names are imported lazily so that ``import urpo`` stays light (no torch, Lightning or transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "URPOModule": "urpo.module",
    "URPODataModule": "urpo.data.datamodule",
    "PolicyArgs": "urpo.args",
    "ModelArgs": "urpo.args",
    "GRPOArgs": "urpo.args",
    "SamplingArgs": "urpo.args",
    "RolloutArgs": "urpo.args",
    "LoggingArgs": "urpo.args",
    "PlayerTemplate": "urpo.prompts",
    "RefereeTemplate": "urpo.referee",
    "SourceSpec": "urpo.data.sources",
    "RewardCallback": "urpo.rewards.base",
    "RewardResult": "urpo.rewards.base",
    "RewardContext": "urpo.rewards.base",
    "Episode": "urpo.episode",
    "MathVerifier": "urpo.rewards.verifier",
    "PreferenceReward": "urpo.rewards.preference",
    "SelfJudge": "urpo.rewards.self_judge",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urpo' has no attribute {name!r}")
