"""The reward plug-in API.

A reward callback scores groups of completions for the row kinds it serves. It is injected into
:class:`~urpo.module.URPOModule` (``rewards=[MathVerifier(), PreferenceReward(), SelfJudge()]`` in code, or by
``class_path`` in YAML); swapping one is passing another object, writing one is a subclass with one method::

    class LengthPenalty(RewardCallback):
        default_kinds = ("open",)

        def score(self, episodes):
            lengths = torch.tensor([[len(c) for c in e.completions] for e in episodes], dtype=torch.float)
            return RewardResult(-lengths / 1000)

They are not ``lightning.Callback`` objects on purpose: their output feeds the loss, while Lightning callbacks are
for optional side logic. Before the first step the module hands every callback a :class:`RewardContext`: what a
callback may use of the run (the rollout engine, the tokenizer, the referee template, the sampling settings and the
other callbacks). A callback may generate with that engine (``self.context.engine``), which is how the self-judging
referee produces its judgments with the current weights.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from urpo import metric_keys as keys
from urpo.data.schema import ROW_KINDS, RowKind
from urpo.episode import Episode
from urpo.errors import ConfigError, RewardError
from urpo.timing import PhaseTimer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from urpo.args import SamplingArgs
    from urpo.engines.base import RolloutEngine
    from urpo.referee import RefereeTemplate


@dataclass(frozen=True)
class RewardContext:
    """What a reward callback may use of the run it serves; given to :meth:`RewardCallback.setup`."""

    engine: RolloutEngine
    """The rollout engine, sampling with the policy's current weights (the self-judge's judgments come from it)."""
    tokenizer: PreTrainedTokenizerBase
    """The policy's tokenizer (chat template, prompt lengths)."""
    referee: RefereeTemplate
    """The referee's judging template, shared by preference rows and self-judging."""
    sampling: SamplingArgs
    """How the run samples completions; judgments start from these settings."""
    rewards: Sequence[RewardCallback] = ()
    """Every reward callback of the run, this one included (e.g. the self-judge's cross-check asks the verifiers)."""


@dataclass
class RewardResult:
    """Rewards for a list of episodes, plus metrics to log."""

    rewards: torch.Tensor
    """``[num_episodes, G]`` float; NaN means 'no reward' (excluded from the group baseline and from the loss)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Scalars to log under ``reward/<callback name>/...``."""


class RewardCallback(ABC):
    """Base class of every reward. Subclasses implement :meth:`score`.

    Args:
        weight: multiplies this callback's rewards before they are summed with other callbacks serving the same kind.
        kinds: the row kinds this callback scores (default: the class's ``default_kinds``).
        name: the name metrics are logged under (default: the class name in snake case).
    """

    default_kinds: ClassVar[tuple[RowKind, ...]] = ()

    def __init__(self, weight: float = 1.0, kinds: Sequence[RowKind] | None = None, name: str | None = None) -> None:
        self.weight = float(weight)
        self.kinds: tuple[RowKind, ...] = tuple(kinds) if kinds is not None else tuple(self.default_kinds)
        unknown = set(self.kinds) - set(ROW_KINDS)
        if unknown or not self.kinds:
            raise ConfigError(
                f"{type(self).__name__}: kinds must be a non-empty subset of {ROW_KINDS}, got {self.kinds}"
            )
        self.name = name or _snake_case(type(self).__name__)
        self.context: RewardContext | None = None

    def setup(self, context: RewardContext) -> None:
        """Called once the run's model, tokenizer and rollout engine exist (before the first step)."""
        self.context = context

    @abstractmethod
    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        """Score the completions of ``episodes`` (all of a kind this callback serves)."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (running statistics, RNG); empty for stateless rewards."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - an optional hook, not abstract
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, kinds={self.kinds})"


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def checked_result(reward: RewardCallback, result: Any, episodes: Sequence[Episode], g: int) -> RewardResult:
    """``result`` of ``reward.score(episodes)`` if the loss can use it; otherwise a :class:`RewardError` naming the
    callback: not a RewardResult, rewards not a ``[len(episodes), G]`` tensor, or an infinite reward (NaN is allowed:
    it means 'no reward'). An infinite reward would make every advantage and gradient of its step NaN."""
    label = f"reward callback {reward.name!r} ({type(reward).__name__})"
    if not isinstance(result, RewardResult):
        raise RewardError(f"{label}: score() must return a RewardResult, got {type(result).__name__}")
    if not isinstance(result.rewards, torch.Tensor):
        raise RewardError(f"{label}: RewardResult.rewards must be a torch.Tensor, got {type(result.rewards).__name__}")
    if tuple(result.rewards.shape) != (len(episodes), g):
        raise RewardError(
            f"{label}: returned rewards of shape {tuple(result.rewards.shape)}, expected {(len(episodes), g)}"
        )
    infinite = torch.isinf(result.rewards.float())  # [N, G]
    if infinite.any():
        i, j = (int(x) for x in infinite.nonzero()[0])
        row = episodes[i].row
        raise RewardError(
            f"{label}: reward {result.rewards[i, j].item()} for completion {j} of {row.source} row {row.index}; "
            "rewards must be finite (NaN means 'no reward')"
        )
    return result


def score_episodes(
    rewards: Sequence[RewardCallback], episodes: Sequence[Episode], g: int, timer: PhaseTimer | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Rewards ``[N, G]`` (NaN: no reward) from every callback serving each episode's kind, summed with their
    weights, and the callbacks' metrics (under ``reward/<callback name>/``); each callback is timed in ``timer``.

    Raises :class:`ConfigError` when no callback serves the kind of some episode.
    """
    timer = timer or PhaseTimer()
    parts: dict[int, list[tuple[float, torch.Tensor]]] = {i: [] for i in range(len(episodes))}
    metrics: dict[str, float] = {}
    for reward in rewards:
        chosen = [i for i, e in enumerate(episodes) if e.row.kind in reward.kinds]
        if not chosen:
            continue
        served = [episodes[i] for i in chosen]
        with timer(f"reward/{reward.name}"):
            result = checked_result(reward, reward.score(served), served, g)
        for row_pos, i in enumerate(chosen):
            parts[i].append((reward.weight, result.rewards[row_pos : row_pos + 1].float()))
        metrics.update({keys.callback_metric(reward.name, k): v for k, v in result.metrics.items()})
    missing = sorted({episodes[i].row.kind for i, p in parts.items() if not p})
    if missing:
        raise ConfigError(f"no reward callback serves row kind(s) {missing}; add one to model.rewards")
    return torch.cat([combine_rewards(parts[i]) for i in range(len(episodes))], dim=0), metrics  # [N, G]


def combine_rewards(parts: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Weighted sum of several callbacks' rewards for the same episodes; NaN anywhere stays NaN (no reward)."""
    total = torch.zeros_like(parts[0][1])  # [N, G]
    for weight, rewards in parts:
        total = total + weight * rewards  # [N, G]
    return total
