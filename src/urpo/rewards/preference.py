"""``PreferenceReward``: the referee trained against gold preferences (``preference`` rows).

A preference row is rendered by the module as a judging task (its N responses in a shuffled presentation order,
stored per completion in ``Episode.orders``); each of the G completions is a judgment. This callback parses each
judgment with the module's :class:`~urpo.referee.RefereeTemplate`, maps it back through the shuffle and rewards its
agreement with the gold order. See ``docs/referee.md`` for the formulas.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from urpo.args import run_seed
from urpo.data.schema import RowKind
from urpo.errors import ConfigError
from urpo.judging import Verdict, generate_judgments, prompt_text, read_verdict
from urpo.referee import (
    PARSE_FAILURE_REASONS,
    RefereeTemplate,
    Tiers,
    exact_match,
    kendall_tau,
    pairwise_accuracy,
    top1_correct,
)
from urpo.rewards.base import Episode, RewardCallback, RewardResult

AgreementMetric = Literal["top1", "pairwise", "exact", "kendall"]
SecondOrder = Literal["reversed", "shuffled"]

# Every metric is mapped into [0, 1] (Kendall's tau from [-1, 1]), so one format penalty below 0 is worse than any
# well-formed verdict whatever the metric.
METRICS: dict[str, Callable[[Tiers, Sequence[float]], float]] = {
    "top1": top1_correct,
    "pairwise": pairwise_accuracy,
    "exact": exact_match,
    "kendall": lambda pred, gold: (kendall_tau(pred, gold) + 1.0) / 2.0,
}


@dataclass
class SecondJudgments:
    """The consistency check's extra judgments of one episode, in ``episode.notes[<callback name>]``."""

    orders: list[list[int]]
    """The second presentation order of each completion's task."""
    judgments: list[str]
    """The second judgment of each completion (text)."""

    @property
    def order(self) -> list[int]:
        """The first completion's second order."""
        return self.orders[0]


def same_preferred(a: Tiers, b: Tiers) -> bool:
    """Whether two rankings put the same response(s) in their top tier: 'both orders preferred the same one'."""
    return set(a[0]) == set(b[0])


def failure_metrics(verdicts: Sequence[Verdict], prefix: str = "") -> dict[str, float]:
    """``parse_failure_rate`` and the count of each failure reason (``parse_failure/<reason>``)."""
    counts = Counter(v.failure for v in verdicts if not v.parsed)
    out = {f"{prefix}parse_failure_rate": sum(counts.values()) / len(verdicts) if verdicts else float("nan")}
    out.update({f"{prefix}parse_failure/{reason}": float(counts.get(reason, 0)) for reason in PARSE_FAILURE_REASONS})
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class PreferenceReward(RewardCallback):
    """Rewards a referee judgment by its agreement with the row's gold order.

    A well-formed judgment gets ``METRICS[metric](ranking, gold_scores)`` in [0, 1]; a judgment without a valid
    ranking gets ``format_penalty`` (a real reward, not NaN: failing the format must be punished, not ignored).

    With ``consistency`` on (J1's verdict consistency, arXiv 2505.10320), the same task is judged a second time
    in another presentation order: for each of the G completions, one more judgment is sampled (all rows in ONE
    batched engine call, with the module's sampling, no gradient, not trained on) and paired with it. The reward
    of completion j is then ``format_penalty`` if it fails to parse, else ``min(a_j, b_j)``, where ``a_j`` is its
    own agreement and ``b_j`` that of its paired second judgment (0 when that one fails to parse). For the binary
    metrics (top1, exact, and pairwise on pairs) this is J1's rule: 1 only when both orders are judged correctly.

    Args:
        metric: agreement with gold: 'top1' (the single best response is a gold best), 'pairwise' (share of gold
            pairs ordered correctly, a predicted tie counts half), 'exact' (the whole tiered order), 'kendall'
            (Kendall's tau-b mapped from [-1, 1] to [0, 1]).
        format_penalty: reward of a completion with no valid ranking; must be <= 0, the worst valid reward.
        consistency: also judge each row in a second presentation order and reward only consistent verdicts.
        second_order: the second presentation order: 'reversed' (the first order backwards; for pairs, the swap)
            or 'shuffled' (a fresh shuffle that differs from the first whenever N >= 2).
        seed: seeds the 'shuffled' second orders (None: the run's seed, ``seed_everything``; see
            :func:`urpo.args.run_seed`); the RNG state is saved in checkpoints.
        weight: multiplies the rewards (see :class:`~urpo.rewards.base.RewardCallback`).
        kinds: the row kinds served (default ``("preference",)``).
        name: the name metrics are logged under (default ``preference_reward``).
    """

    default_kinds = ("preference",)

    def __init__(
        self,
        metric: AgreementMetric = "pairwise",
        format_penalty: float = -0.5,
        consistency: bool = False,
        second_order: SecondOrder = "reversed",
        seed: int | None = None,
        weight: float = 1.0,
        kinds: Sequence[RowKind] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, kinds=kinds, name=name)
        if metric not in METRICS:
            raise ConfigError(f"PreferenceReward: metric must be one of {sorted(METRICS)}, got {metric!r}")
        if second_order not in ("reversed", "shuffled"):
            raise ConfigError(f"PreferenceReward: second_order must be 'reversed' or 'shuffled', got {second_order!r}")
        if not math.isfinite(format_penalty) or format_penalty > 0:
            # Above 0 a malformed verdict would beat a wrong one, teaching the referee to dodge the format.
            raise ConfigError(f"PreferenceReward: format_penalty must be a finite number <= 0, got {format_penalty}")
        self.metric, self.format_penalty = metric, float(format_penalty)
        self.consistency, self.second_order = consistency, second_order
        self.rng = random.Random(run_seed() if seed is None else seed)

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        template = self._template()
        first = [
            [
                read_verdict(template, text, order, self._prompt(e, order))
                for text, order in zip(e.completions, _orders(e))
            ]
            for e in episodes
        ]
        second = self._second_verdicts(episodes) if self.consistency else None
        rewards = [
            [self._reward(e, v, second[i][j] if second else None) for j, v in enumerate(first[i])]
            for i, e in enumerate(episodes)
        ]
        metrics = self._metrics(episodes, first, second)
        return RewardResult(torch.tensor(rewards, dtype=torch.float32), metrics)  # [N, G]

    def agreement(self, verdict: Verdict, episode: Episode) -> float:
        """The configured metric of a parsed verdict against the row's gold scores, in [0, 1] (0 if unparsed)."""
        return METRICS[self.metric](verdict.tiers, episode.row.scores) if verdict.parsed else 0.0

    def _reward(self, episode: Episode, verdict: Verdict, second: Verdict | None) -> float:
        if not verdict.parsed:
            return self.format_penalty
        value = self.agreement(verdict, episode)
        return value if second is None else min(value, self.agreement(second, episode))

    def _template(self) -> RefereeTemplate:
        if self.context is None:
            raise ConfigError(f"{self.name}: setup(context) was not called; the referee template comes from the run")
        return self.context.referee

    def _prompt(self, episode: Episode, order: list[int]) -> str | None:
        """The text of the judging prompt shown in ``order`` (for the echo check); None for unrendered episodes."""
        if not episode.messages:
            return None
        if order == _order(episode):
            return prompt_text(episode.messages)
        return prompt_text(self._template().messages(episode.row.prompt, episode.row.responses, order))

    def _second_verdicts(self, episodes: Sequence[Episode]) -> list[list[Verdict]]:
        """One extra judgment per completion, in its second order; all rows in one engine call.

        Episodes whose G judgments share one order get G samples of one second prompt; with mirrored orders each
        completion's second order is derived from its own order, one sample each.
        """
        orders = [[self._second_order(o) for o in _orders(e)] for e in episodes]
        shared = all(all(o == row[0] for o in row) for row in orders)
        template, g = self._template(), len(episodes[0].completions) if episodes else 0
        if shared:
            messages = [template.messages(e.row.prompt, e.row.responses, row[0]) for e, row in zip(episodes, orders)]
            texts = generate_judgments(self.context.engine, self.context.tokenizer, messages, g, self.context.sampling)
            prompts = [[prompt_text(m)] * g for m in messages]
        else:
            messages = [
                template.messages(e.row.prompt, e.row.responses, o) for e, row in zip(episodes, orders) for o in row
            ]
            texts = generate_judgments(self.context.engine, self.context.tokenizer, messages, 1, self.context.sampling)
            prompts = [[prompt_text(m) for m in messages[i * g : (i + 1) * g]] for i in range(len(episodes))]
        out = []
        for i, episode in enumerate(episodes):
            mine = texts[i * g : (i + 1) * g]
            episode.notes[self.name] = SecondJudgments(orders[i], mine)
            out.append([read_verdict(template, t, o, p) for t, o, p in zip(mine, orders[i], prompts[i])])
        return out

    def _second_order(self, order: list[int]) -> list[int]:
        if self.second_order == "reversed" or len(order) < 2:
            return order[::-1]
        while True:  # at least two orders exist, so this ends (expected N! / (N! - 1) draws)
            fresh = list(order)
            self.rng.shuffle(fresh)
            if fresh != order:
                return fresh

    def _metrics(
        self, episodes: Sequence[Episode], first: list[list[Verdict]], second: list[list[Verdict]] | None
    ) -> dict[str, float]:
        flat = [v for row in first for v in row]
        parsed = [(v, e) for row, e in zip(first, episodes) for v in row if v.parsed]
        out = failure_metrics(flat)
        out["referee_accuracy"] = _mean([pairwise_accuracy(v.tiers, e.row.scores) for v, e in parsed])
        out["agreement"] = _mean([self.agreement(v, e) for v, e in parsed])
        # Position bias: 0.5 for a judge that reads the responses (presentation orders are shuffled); near 0 or 1
        # for one that names a position. Mirrored orders then split its groups evenly (reward 0.5, spread 0.5),
        # but a judge that always names the same position samples nothing else, and its gradient vanishes.
        shown_first = [
            float(order[0] in v.tiers[0])
            for row, e in zip(first, episodes)
            for v, order in zip(row, _orders(e))
            if v.parsed
        ]
        out["first_shown_top"] = _mean(shown_first)
        if second is not None:
            pairs = [(a, b) for ra, rb in zip(first, second) for a, b in zip(ra, rb)]
            both = [(a, b) for a, b in pairs if a.parsed and b.parsed]
            out["position_consistency"] = _mean([float(same_preferred(a.tiers, b.tiers)) for a, b in both])
            out.update(failure_metrics([b for _, b in pairs], prefix="second_"))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.setstate(as_rng_state(state["rng"]))


def _orders(episode: Episode) -> list[list[int]]:
    """The presentation order of each completion's judging prompt (:attr:`Episode.orders`)."""
    if episode.orders is None:
        # Without the presentation order a verdict cannot be mapped back; guessing would reward the wrong response.
        where = f"{episode.row.source}#{episode.row.index}"
        raise ConfigError(f"preference episode {where} has no presentation order (render it with the module)")
    return [list(o) for o in episode.orders]


def _order(episode: Episode) -> list[int]:
    return _orders(episode)[0]


def as_rng_state(state: Any) -> tuple:
    """``random.Random`` state, also when a checkpoint round trip turned its tuples into lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


__all__ = [
    "AgreementMetric",
    "METRICS",
    "PreferenceReward",
    "SecondJudgments",
    "SecondOrder",
    "as_rng_state",
    "failure_metrics",
    "same_preferred",
]
