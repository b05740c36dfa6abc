"""Open-row referees for the evidence runs, and a probe that scores their rewards against the kept-aside truth.

* :class:`ProbedSelfJudge`: URPO's :class:`~urpo.rewards.SelfJudge` (the policy judges its own answers).
* :class:`FrozenJudge`: the paper's baseline: a SEPARATE referee model, loaded from a folder and never trained,
  judges the policy's answers with exactly the same prompts, shuffles, parser and Borda aggregation as SelfJudge
  (it is a SelfJudge whose generations come from another model).

Both log ``truth_agreement``: over pairs of answers in a group whose true distance to the answer differs, the share
the reward orders the same way (a tie in reward counts half). The truth is read only by this probe, after the
rewards are computed, so it never reaches training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tools.evidence.spec import world_spec
from tools.evidence.world import answer_of, read_jsonl
from urpo.engines.hf_engine import HFGenerateEngine
from urpo.episode import Episode
from urpo.rewards.base import RewardContext, RewardResult
from urpo.rewards.self_judge import SelfJudge

MISSING_ANSWER_DISTANCE = 1000
"""True distance given to an answer without a readable ``\\boxed{}`` integer: worse than any real answer."""


def true_distances(completions: Sequence[str], truth: int, read: Callable[[str], int | None] = answer_of) -> list[int]:
    """Distance of each completion's answer (as ``read`` finds it) to the truth."""
    answers = [read(c) for c in completions]
    return [MISSING_ANSWER_DISTANCE if a is None else abs(a - truth) for a in answers]


def truth_agreement(rewards: Sequence[float], distances: Sequence[int]) -> tuple[float, int]:
    """(agreeing pairs, pairs): pairs with different true distances and both rewarded; a reward tie counts 0.5."""
    hits, pairs = 0.0, 0
    for i in range(len(rewards)):
        for j in range(i + 1, len(rewards)):
            if distances[i] == distances[j] or math.isnan(rewards[i]) or math.isnan(rewards[j]):
                continue
            pairs += 1
            truth_says = distances[i] < distances[j]
            hits += 0.5 if rewards[i] == rewards[j] else float((rewards[i] > rewards[j]) == truth_says)
    return hits, pairs


class TruthProbe:
    """Mixin for open-row judges: adds ``truth_agreement`` and ``open_correct`` to the metrics of :meth:`score`."""

    truth_path: str | None
    world: str = "arithmetic"
    """Whose answer format the probe reads (:func:`tools.evidence.spec.world_spec`)."""
    _truth: dict[str, int] | None = None

    def probe(self, episodes: Sequence[Episode], result: RewardResult) -> RewardResult:
        if not self.truth_path:
            return result
        if self._truth is None:
            self._truth = {r["prompt"]: r["truth"] for r in read_jsonl(Path(self.truth_path))}
        hits, pairs, correct, total = 0.0, 0, 0, 0
        for i, episode in enumerate(episodes):
            truth = self._truth.get(episode.row.prompt)
            if episode.row.kind != "open" or truth is None:
                continue
            distances = true_distances(episode.completions, truth, world_spec(self.world).read_answer)
            h, p = truth_agreement(result.rewards[i].tolist(), distances)
            hits, pairs = hits + h, pairs + p
            correct, total = correct + sum(d == 0 for d in distances), total + len(distances)
        result.metrics["truth_agreement"] = hits / pairs if pairs else math.nan
        result.metrics["open_correct"] = correct / total if total else math.nan
        return result


class ProbedSelfJudge(TruthProbe, SelfJudge):
    """URPO's SelfJudge, plus the truth probe (``truth_path``: the kept-aside answers of the open rows)."""

    def __init__(self, truth_path: str | None = None, world: str = "arithmetic", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.truth_path, self.world = truth_path, world

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        return self.probe(episodes, super().score(episodes))


class FrozenJudge(ProbedSelfJudge):
    """A separate, frozen generative referee (the paper's baseline) rewarding open rows.

    Args:
        referee_path: folder of the referee model (``save_pretrained``); it must share the policy's tokenizer.
        truth_path: see :class:`ProbedSelfJudge`.
        **kwargs: :class:`~urpo.rewards.SelfJudge`'s arguments (chunking, shuffles, judgment sampling).
    """

    def __init__(self, referee_path: str, truth_path: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", "frozen_judge")
        super().__init__(truth_path, **kwargs)
        self.referee_path = referee_path
        self.referee_model: torch.nn.Module | None = None

    def setup(self, context: RewardContext) -> None:
        from transformers import AutoModelForCausalLM

        self.referee_model = AutoModelForCausalLM.from_pretrained(self.referee_path, dtype=torch.float32).eval()
        self.referee_model.requires_grad_(False)
        # The run's context, except that judgments are generated by the frozen referee's engine.
        engine = HFGenerateEngine(lambda: self.referee_model, context.tokenizer)
        super().setup(dataclasses.replace(context, engine=engine))
