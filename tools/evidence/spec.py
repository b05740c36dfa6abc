"""What differs between the evidence's worlds, by name: the prompts RL and the evaluation use, and how long a greedy
answer or judgment may be. Everything else (the runs, the schedule, the report and the plots) is shared.

* ``arithmetic``: the toy world (:mod:`tools.evidence.world`), a tiny model trained from scratch;
* ``smollm2``: the real-model world (:mod:`tools.evidence.smollm2`), SmolLM2-135M-Instruct as pretrained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from urpo.prompts import PlayerTemplate
from urpo.referee import RefereeTemplate
from urpo.rewards.base import RewardCallback

WORLDS = ("arithmetic", "smollm2")


@dataclass(frozen=True)
class WorldSpec:
    """The prompts and token budgets of one world."""

    name: str
    player: PlayerTemplate
    """How the player is asked (RL rollouts and held-out solving)."""
    referee: RefereeTemplate
    """How the referee is asked (preference rows, open-row judging, held-out judging)."""
    answer_tokens: int
    """Greedy tokens for a held-out answer."""
    judgment_tokens: int
    """Greedy tokens for a held-out judgment."""
    read_answer: Callable[[str], int | None]
    """The integer answer of a reply, or None: the held-out scores and the open-row truth probe read it."""
    verifier: Callable[[], RewardCallback]
    """Builds the reward of verifiable rows (it must read answers as ``read_answer`` does)."""


def world_spec(name: str) -> WorldSpec:
    """The spec of world ``name`` (one of :data:`WORLDS`)."""
    if name == "arithmetic":
        from tools.evidence.world import PLAYER, REFEREE, answer_of
        from urpo.rewards.verifier import MathVerifier

        return WorldSpec(name, PLAYER, REFEREE, 10, 32, answer_of, MathVerifier)
    if name == "smollm2":
        from tools.evidence.smollm2 import ANSWER_TOKENS, JUDGMENT_TOKENS, NumberVerifier, answer_number
        from tools.evidence.smollm2 import PLAYER as SMOLLM2_PLAYER
        from tools.evidence.smollm2 import REFEREE as SMOLLM2_REFEREE

        return WorldSpec(
            name, SMOLLM2_PLAYER, SMOLLM2_REFEREE, ANSWER_TOKENS, JUDGMENT_TOKENS, answer_number, NumberVerifier
        )
    raise ValueError(f"unknown evidence world {name!r}; known: {', '.join(WORLDS)}")
