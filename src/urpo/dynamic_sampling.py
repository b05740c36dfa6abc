"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, section 3.2), with exact kind shares.

A group whose G rewards are all equal has zero advantage everywhere: it costs a rollout and gives no gradient, and
as a model masters (or gives up on) a kind of row, more and more of its groups are like that. DAPO over-samples
prompts and trains only on groups whose rewards differ. Here the data module draws ``oversample`` times the rows
of each kind (``URPODataModule(oversample=...)``) and tells the batch how many of each kind to train on; after
scoring, :func:`select_groups` keeps, per kind, the first groups whose rewards differ, and only when there are not
enough of those fills the rest with all-equal groups. The kind shares of the trained batch are therefore exactly
the configured ones, every step. Unlike DAPO, which keeps sampling until the batch is full, one over-sampled
draw is made per step: the cost of a step stays bounded, and the fill is counted in the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from urpo import metric_keys as keys
from urpo.objective import zero_variance


def select_groups(
    kinds: Sequence[str], rewards: torch.Tensor, quotas: Mapping[str, int]
) -> tuple[list[int], dict[str, float]]:
    """The groups to train on: per kind, ``quotas[kind]`` of them, groups whose rewards differ first.

    Args:
        kinds: the row kind of each group.
        rewards: ``[N, G]`` rewards (NaN: no reward; a group with fewer than two rewards counts as all-equal).
        quotas: groups of each kind to keep; a kind with fewer groups than its quota keeps them all.

    Returns:
        The kept group indices in batch order, and ``dynamic_sampling/*`` metrics: per kind the groups
        ``dropped`` and the all-equal groups ``filled`` in for want of informative ones, and their totals.
    """
    if len(kinds) != rewards.shape[0]:
        raise ValueError(f"{len(kinds)} kinds for {rewards.shape[0]} reward groups")
    flat = [zero_variance(group) for group in rewards.detach().float().cpu()]  # rewards: [N, G]
    kept: list[int] = []
    metrics: dict[str, float] = {}
    for kind in dict.fromkeys(kinds):  # kinds in order of first appearance
        members = [i for i, k in enumerate(kinds) if k == kind]
        quota = quotas.get(kind, len(members))
        informative = [i for i in members if not flat[i]]
        chosen = informative[:quota]
        filled = [i for i in members if flat[i]][: quota - len(chosen)]
        kept += chosen + filled
        metrics[keys.kind_dropped_groups(kind)] = float(len(members) - len(chosen) - len(filled))
        metrics[keys.kind_filled_groups(kind)] = float(len(filled))
    filled_total = sum(metrics[keys.kind_filled_groups(kind)] for kind in dict.fromkeys(kinds))
    metrics[keys.DYNAMIC_SAMPLING_DROPPED] = float(len(kinds) - len(kept))
    metrics[keys.DYNAMIC_SAMPLING_FILLED] = filled_total
    return sorted(kept), metrics


__all__ = ["select_groups"]
