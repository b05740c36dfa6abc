"""Reward callbacks for the fault and resume tests: one that varies within groups and records what it saw, and
misbehaving ones (NaN for everything, an infinite reward, a plain list instead of a RewardResult)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from urpo.rewards.base import Episode, RewardCallback, RewardResult


class OddTokenShare(RewardCallback):
    """Reward = share of odd token ids in each completion: varies within every group, so the weights a run ends
    with depend on exactly what it sampled. Appends each call's token ids and rewards to ``record`` (JSON lines)."""

    default_kinds = ("verifiable", "preference", "open")

    def __init__(self, record: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record = record

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        ids = [e.completion_ids for e in episodes]
        rewards = torch.tensor([[sum(t % 2 for t in c) / max(len(c), 1) for c in group] for group in ids])
        if self.record is not None:
            with open(self.record, "a") as out:
                out.write(json.dumps({"ids": ids, "rewards": rewards.tolist()}) + "\n")
        return RewardResult(rewards)


class AlwaysNaN(RewardCallback):
    """A judge whose judgments never parse: no completion gets a reward."""

    default_kinds = ("verifiable", "preference", "open")

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        return RewardResult(torch.full((len(episodes), len(episodes[0].completions)), float("nan")))


class OneInfinite(RewardCallback):
    """Finite rewards except one ``+inf``: every gradient would be NaN."""

    default_kinds = ("verifiable", "preference", "open")

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        rewards = torch.zeros(len(episodes), len(episodes[0].completions))
        rewards[0, 0] = float("inf")
        return RewardResult(rewards)


class PlainList(RewardCallback):
    """Returns a nested list of floats instead of a RewardResult."""

    default_kinds = ("verifiable", "preference", "open")

    def score(self, episodes: Sequence[Episode]):  # type: ignore[override]
        return [[0.0] * len(e.completions) for e in episodes]
