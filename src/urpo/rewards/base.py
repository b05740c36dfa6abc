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
for optional side logic. A callback may generate with the module's rollout engine (``self.module.engine``), which
is how the self-judging referee produces its judgments with the current weights.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from urpo.data.schema import ROW_KINDS, Row, RowKind
from urpo.errors import ConfigError, RewardError

if TYPE_CHECKING:
    from urpo.module import URPOModule
    from urpo.rollout import FinishReason


@dataclass
class Episode:
    """One row of a step, the prompt it was rendered to, and its group of G completions."""

    row: Row
    """The data row."""
    messages: list[dict[str, str]]
    """The chat messages the completions answer (player prompt, or referee prompt for preference rows)."""
    completions: list[str] = field(default_factory=list)
    """The G sampled completions (decoded text)."""
    finish_reasons: list[FinishReason] = field(default_factory=list)
    """Why each completion ended ('stop' or 'length')."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Rendering details a reward needs, e.g. ``order``: the shuffled presentation order of a referee prompt."""


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
            raise ConfigError(f"{type(self).__name__}: kinds must be a non-empty subset of {ROW_KINDS}, got {self.kinds}")
        self.name = name or _snake_case(type(self).__name__)
        self.module: URPOModule | None = None

    def setup(self, module: URPOModule) -> None:
        """Called once the module's model, tokenizer and rollout engine exist (before the first step)."""
        self.module = module

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
        raise RewardError(f"{label}: returned rewards of shape {tuple(result.rewards.shape)}, expected {(len(episodes), g)}")
    infinite = torch.isinf(result.rewards.float())  # [N, G]
    if infinite.any():
        i, j = (int(x) for x in infinite.nonzero()[0])
        row = episodes[i].row
        raise RewardError(
            f"{label}: reward {result.rewards[i, j].item()} for completion {j} of {row.source} row {row.index}; "
            "rewards must be finite (NaN means 'no reward')"
        )
    return result


def combine_rewards(parts: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Weighted sum of several callbacks' rewards for the same episodes; NaN anywhere stays NaN (no reward)."""
    total = torch.zeros_like(parts[0][1])  # [N, G]
    for weight, rewards in parts:
        total = total + weight * rewards  # [N, G]
    return total
