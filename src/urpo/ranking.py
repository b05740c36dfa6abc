"""Comparing and aggregating rankings: Borda scores for self-judging, agreement with a gold order for the referee.

A ranking is given as tiers: a tuple of tuples of item indices, best tier first; items in one tier are tied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Tiers = tuple[tuple[int, ...], ...]
"""A tiered ranking: groups of item indices, best group first; items within a group are tied."""


def borda_scores(judgments: Sequence[Tiers], n: int) -> list[float | None]:
    """Mean normalised Borda score of each of ``n`` items over the judgments that ranked it.

    In a judgment of m ranked items, an item scores (items strictly below it + 0.5 * items tied with it) /
    (m - 1), in [0, 1]: 1 for a sole winner, 0 for a sole loser, 0.5 for an all-way tie. Judgments may cover a
    subset of the items (a group judged in chunks); each item averages over the judgments it appears in. A
    judgment of one item says nothing about it and is skipped; items never ranked get None.

    Raises:
        ValueError: If a judgment names an index outside ``range(n)`` or names an item twice.
    """
    totals, counts = [0.0] * n, [0] * n
    for j, tiers in enumerate(judgments):
        items = [i for tier in tiers for i in tier]
        if len(set(items)) != len(items) or any(not 0 <= i < n for i in items):
            raise ValueError(f"judgment {j} {tiers!r} repeats items or leaves range({n})")
        m = len(items)
        if m < 2:
            continue
        below = m
        for tier in tiers:
            below -= len(tier)
            for i in tier:
                totals[i] += (below + 0.5 * (len(tier) - 1)) / (m - 1)
                counts[i] += 1
    return [total / count if count else None for total, count in zip(totals, counts)]


def _ranks(pred_tiers: Tiers, gold_scores: Sequence[float]) -> list[int]:
    """Tier index of each item (lower is better), after checking pred ranks every gold item exactly once."""
    n = len(gold_scores)
    if not all(math.isfinite(s) for s in gold_scores):
        raise ValueError(f"gold scores must be finite, got {list(gold_scores)!r}")
    rank = {i: t for t, tier in enumerate(pred_tiers) for i in tier}
    if sorted(i for tier in pred_tiers for i in tier) != list(range(n)):
        raise ValueError(f"predicted tiers {pred_tiers!r} must rank each of {n} items exactly once")
    return [rank[i] for i in range(n)]


def _pair_signs(pred_tiers: Tiers, gold_scores: Sequence[float]) -> list[tuple[int, int]]:
    """For each pair i < j: (+1, 0 or -1 as pred puts i above, level with or below j, the same for gold)."""
    rank, n = _ranks(pred_tiers, gold_scores), len(gold_scores)

    def sign(x: float) -> int:
        return (x > 0) - (x < 0)

    return [(sign(rank[j] - rank[i]), sign(gold_scores[i] - gold_scores[j])) for i in range(n) for j in range(i + 1, n)]


def pairwise_accuracy(pred_tiers: Tiers, gold_scores: Sequence[float]) -> float:
    """Share of strictly ordered gold pairs that pred orders the same way; a predicted tie counts 0.5.

    Returns 0.0 when gold has no strict pair: a constant that carries no preference and so no advantage.
    """
    strict = [(pred, gold) for pred, gold in _pair_signs(pred_tiers, gold_scores) if gold]
    hits = sum(1.0 if pred == gold else 0.5 if pred == 0 else 0.0 for pred, gold in strict)
    return hits / len(strict) if strict else 0.0


def top1_correct(pred_tiers: Tiers, gold_scores: Sequence[float]) -> float:
    """1.0 if pred's top tier is a single item with the maximum gold score (any of tied best ones), else 0.0."""
    _ranks(pred_tiers, gold_scores)
    top = next(tier for tier in pred_tiers if tier)
    return 1.0 if len(top) == 1 and gold_scores[top[0]] == max(gold_scores) else 0.0


def exact_match(pred_tiers: Tiers, gold_scores: Sequence[float]) -> float:
    """1.0 if pred's tiers equal gold's (equal gold scores form one tier), else 0.0."""
    _ranks(pred_tiers, gold_scores)
    gold = [frozenset(i for i, s in enumerate(gold_scores) if s == v) for v in sorted(set(gold_scores), reverse=True)]
    return 1.0 if [frozenset(tier) for tier in pred_tiers if tier] == gold else 0.0


def kendall_tau(pred_tiers: Tiers, gold_scores: Sequence[float]) -> float:
    """Kendall's tau-b between pred and gold, in [-1, 1], counting ties on either side; 0.0 where undefined."""
    signs = _pair_signs(pred_tiers, gold_scores)
    untied_pred = sum(pred != 0 for pred, _ in signs)
    untied_gold = sum(gold != 0 for _, gold in signs)
    denominator = math.sqrt(untied_pred * untied_gold)
    return sum(pred * gold for pred, gold in signs) / denominator if denominator else 0.0


def agreement(pred_tiers: Tiers, gold_scores: Sequence[float]) -> dict[str, float]:
    """All agreement metrics of a predicted ranking (over original indices) against gold utilities."""
    return {
        "pairwise_accuracy": pairwise_accuracy(pred_tiers, gold_scores),
        "top1": top1_correct(pred_tiers, gold_scores),
        "exact_match": exact_match(pred_tiers, gold_scores),
        "kendall_tau": kendall_tau(pred_tiers, gold_scores),
    }


__all__ = ["Tiers", "agreement", "borda_scores", "exact_match", "kendall_tau", "pairwise_accuracy", "top1_correct"]
