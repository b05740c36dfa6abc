"""``SelfJudge``: rewards for ``open`` rows from the model itself, judging its own answers with its current weights.

After the player rollout, every group of G answers is put to the same model as a listwise judging task (the
module's :class:`~urpo.referee.RefereeTemplate`; the row's reference is shown when the template allows it), in
``judgments_per_group`` presentations with different shuffles, split into chunks when a group is too big for one
prompt. All judging prompts of a step go to the rollout engine in ONE batched call (one extra generation per
chunk, not per pair). Parsed rankings are aggregated per answer with normalised Borda scores; answers never
validly ranked get NaN (no reward: excluded from the group baseline and the loss). See ``docs/referee.md``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from urpo.args import run_seed
from urpo.data.schema import RowKind
from urpo.errors import ConfigError
from urpo.judging import Verdict, read_verdict
from urpo.referee import borda_scores, pairwise_accuracy, shuffled_order
from urpo.rewards.base import Episode, RewardCallback, RewardResult, combine_rewards
from urpo.rewards.preference import as_rng_state, failure_metrics
from urpo.timing import timed

if TYPE_CHECKING:
    from urpo.args import SamplingArgs
    from urpo.rewards.base import RewardContext

ShuffleMode = Literal["mirrored", "independent"]


@dataclass
class JudgeTask:
    """One judging prompt: a chunk of one group's answers in the order they are shown."""

    episode: int
    """Position of the judged episode in the list given to :meth:`SelfJudge.score`."""
    members: list[int]
    """Answer indices (within the group) in presentation order: ``members[k]`` is shown with label k."""
    prompt: str
    """The rendered prompt text sent to the engine."""
    num_tokens: int | None = None
    """Prompt length in tokens (measured only when ``max_prompt_tokens`` is set)."""
    verdict: Verdict | None = None
    """The parsed judgment, mapped to group answer indices (filled after generation)."""


@dataclass
class GroupJudgment:
    """What the self-judge recorded about one group, in ``episode.notes[<callback name>]``."""

    scores: list[float]
    """Normalised Borda score of each answer before the length tie-break (NaN: never validly ranked)."""
    judgments: int
    """Judging prompts of the group."""
    parsed: int
    """Of those, the judgments that parsed into a ranking."""


def split_even(items: Sequence[int], k: int) -> list[list[int]]:
    """Splits ``items`` into consecutive chunks of at most ``k`` (k >= 2), sizes differing by at most one.

    No chunk holds a single item (a ranking of one says nothing): where near-equal sizes would give one, fewer,
    larger chunks are used, so with ``k == 2`` and an odd count one chunk holds 3.
    """
    n = len(items)
    count = max(1, math.ceil(n / k))
    if count > 1 and n // count < 2:
        count = n // 2
    base, extra = divmod(n, count)
    sizes = [base + 1] * extra + [base] * (count - extra)
    starts = [sum(sizes[:c]) for c in range(count)]
    return [list(items[s : s + size]) for s, size in zip(starts, sizes)]


def length_tiebreak(scores: Sequence[float], lengths: Sequence[int], margin: float) -> list[float]:
    """Among answers with close scores, gives the higher scores to the shorter answers.

    Valid (non-NaN) scores are sorted best first and cut greedily into bands: an answer joins the current band when
    its score is less than ``margin`` below the band's best score, else it starts a new band. Within each band the
    band's own scores are handed out again by length, shortest answer first (equal lengths keep their score
    order). Scores therefore keep their multiset (same mean and spread), answers in different bands keep their
    order, and within a band the shorter answer never scores below the longer one. ``margin <= 0`` changes nothing.
    """
    out = list(scores)
    if margin <= 0:
        return out
    ranked = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: (-scores[i], i))
    start = 0
    while start < len(ranked):
        end = start + 1
        while end < len(ranked) and scores[ranked[start]] - scores[ranked[end]] < margin:
            end += 1
        band = ranked[start:end]
        for i, value in zip(sorted(band, key=lambda i: (lengths[i], -scores[i], i)), [scores[i] for i in band]):
            out[i] = value
        start = end
    return out


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class SelfJudge(RewardCallback):
    """The same model, as referee, ranks each group of its own answers; Borda scores become rewards.

    For each group, ``judgments_per_group`` presentation orders are drawn: with ``shuffle='mirrored'`` every second
    order is the previous one reversed (each answer's position is mirrored, which cancels a linear position bias,
    and for 2 judgments guarantees they differ); with 'independent' each is a fresh shuffle. Each order is cut into
    consecutive chunks (:func:`split_even`) of at most ``chunk_size`` answers, or of the whole group when
    ``chunk_size`` is None; when a chunk's rendered prompt is longer than ``max_prompt_tokens``, the chunk size is
    halved (down to 2) for that order. With chunks, a mirrored pair judges the same chunks (each in both orders);
    answers of different chunks meet only under other shuffles ('independent', or more than 2 judgments), and
    Borda scores from different chunks are normalised per chunk. Each chunk is one judging prompt; all prompts of
    the step (and of the verifiable groups when ``cross_check_verifiable``) are generated in ONE
    ``engine.generate(prompts, 1, ...)`` call, without gradient. Judgments are not trained on: they have no ground
    truth to reward them by. Truncated answers are judged as they are shown.

    The reward of an answer is its normalised Borda score (:func:`~urpo.referee.borda_scores`: (answers ranked
    below + half the answers tied with it) / (chunk size - 1), averaged over the judgments that validly ranked it),
    in [0, 1]; then :func:`length_tiebreak` when ``length_tiebreak > 0``. Unranked answers get NaN; a group with no
    valid judgment is all NaN (GRPO skips it).

    With ``cross_check_verifiable``, groups of ``verifiable`` rows are judged the same way, in the same call, but
    get reward 0.0 from this callback (0, not NaN: the module sums callbacks and NaN would erase the verifier's
    reward), and the agreement of the self-judge scores with the reward of the other callbacks serving
    ``verifiable`` (e.g. MathVerifier, called once more here on the same episodes) is logged under ``cross_check/``.

    Args:
        judgments_per_group: judging presentations per group (each is one prompt per chunk).
        chunk_size: most answers shown in one judging prompt (>= 2); None: the whole group.
        max_prompt_tokens: the referee's prompt budget in tokens; chunks are halved until their prompts fit
            (down to 2 answers; longer ones are still judged and counted in ``over_budget``). None: no check.
        shuffle: 'mirrored' (every second order reverses the previous) or 'independent' (fresh shuffles).
        temperature: sampling temperature of the judgments (None: the module's sampling temperature).
        max_new_tokens: token limit of one judgment (None: the module's ``sampling.max_new_tokens``).
        length_tiebreak: margin of the length tie-break (see :func:`length_tiebreak`); 0 turns it off.
        cross_check_verifiable: also judge verifiable groups (no reward) and log agreement with the verifier.
        seed: seeds the presentation shuffles (None: the run's seed, ``seed_everything``; see
            :func:`urpo.args.run_seed`); the RNG state is saved in checkpoints.
        weight: multiplies the rewards (see :class:`~urpo.rewards.base.RewardCallback`).
        kinds: the row kinds rewarded (default ``("open",)``); 'verifiable' is added by the cross-check.
        name: the name metrics are logged under (default ``self_judge``).
    """

    default_kinds = ("open",)

    def __init__(
        self,
        judgments_per_group: int = 2,
        chunk_size: int | None = None,
        max_prompt_tokens: int | None = 4096,
        shuffle: ShuffleMode = "mirrored",
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        length_tiebreak: float = 0.0,
        cross_check_verifiable: bool = False,
        seed: int | None = None,
        weight: float = 1.0,
        kinds: Sequence[RowKind] | None = None,
        name: str | None = None,
    ) -> None:
        kinds = tuple(kinds) if kinds is not None else self.default_kinds
        if cross_check_verifiable and "verifiable" not in kinds:
            kinds = (*kinds, "verifiable")
        super().__init__(weight=weight, kinds=kinds, name=name)
        _check(judgments_per_group >= 1, "judgments_per_group", judgments_per_group, ">= 1")
        _check(chunk_size is None or chunk_size >= 2, "chunk_size", chunk_size, ">= 2 or None")
        limit = max_prompt_tokens
        _check(limit is None or limit >= 1, "max_prompt_tokens", limit, ">= 1 or None")
        _check(shuffle in ("mirrored", "independent"), "shuffle", shuffle, "'mirrored' or 'independent'")
        _check(temperature is None or temperature > 0, "temperature", temperature, "> 0 or None")
        _check(max_new_tokens is None or max_new_tokens >= 1, "max_new_tokens", max_new_tokens, ">= 1 or None")
        _check(math.isfinite(length_tiebreak) and length_tiebreak >= 0, "length_tiebreak", length_tiebreak, ">= 0")
        self.judgments_per_group, self.chunk_size = judgments_per_group, chunk_size
        self.max_prompt_tokens, self.shuffle = max_prompt_tokens, shuffle
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.length_tiebreak, self.cross_check_verifiable = float(length_tiebreak), cross_check_verifiable
        self.rng = random.Random(run_seed() if seed is None else seed)

    def setup(self, context: RewardContext) -> None:
        super().setup(context)
        if self.cross_check_verifiable and not self._verifiers():
            # Alone, this callback's 0.0 would silently become the whole reward of verifiable rows.
            raise ConfigError(f"{self.name}: cross_check_verifiable needs another reward callback serving 'verifiable'")

    @property
    def sampling(self) -> SamplingArgs:
        """The module's sampling settings with this callback's judgment overrides."""
        overrides = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        return dataclasses.replace(self.context.sampling, **{k: v for k, v in overrides.items() if v is not None})

    def score(self, episodes: Sequence[Episode]) -> RewardResult:
        if self.context is None:
            raise ConfigError(f"{self.name}: setup(context) was not called; judging needs the run's engine")
        tasks = [task for i, episode in enumerate(episodes) for task in self.plan(episode, i)]
        self._judge(tasks)
        g = len(episodes[0].completions) if episodes else 0
        by_episode: dict[int, list[JudgeTask]] = {}
        for task in tasks:
            by_episode.setdefault(task.episode, []).append(task)
        scores = [self._scores(e, by_episode.get(i, [])) for i, e in enumerate(episodes)]
        rewards = [s if e.row.kind == "open" else [0.0] * g for e, s in zip(episodes, scores)]
        metrics = self._metrics(episodes, tasks, scores)
        return RewardResult(torch.tensor(rewards, dtype=torch.float32).reshape(len(episodes), g), metrics)  # [N, G]

    # ---- building and running the judging prompts --------------------------------------------------------------

    def plan(self, episode: Episode, index: int) -> list[JudgeTask]:
        """The judging prompts of one group: ``judgments_per_group`` orders, each cut into chunks that fit."""
        g, order, tasks = len(episode.completions), None, []
        for j in range(self.judgments_per_group):
            mirror = self.shuffle == "mirrored" and j % 2 == 1
            order = order[::-1] if mirror else shuffled_order(g, self.rng)
            tasks += self._fit_chunks(episode, index, order)
        return tasks

    def _fit_chunks(self, episode: Episode, index: int, order: list[int]) -> list[JudgeTask]:
        k = min(self.chunk_size or len(order), len(order))
        while True:
            tasks = [self._task(episode, index, chunk) for chunk in split_even(order, k)] if len(order) >= 2 else []
            limit = self.max_prompt_tokens
            if k <= 2 or limit is None or all(t.num_tokens <= limit for t in tasks):
                return tasks
            k = max(2, math.ceil(k / 2))

    def _task(self, episode: Episode, index: int, members: list[int]) -> JudgeTask:
        from urpo.prompts import render_chat

        # Verifiable rows are judged without their gold answer: the cross-check measures the referee unaided.
        reference = getattr(episode.row, "reference", None)
        responses = [episode.completions[i] for i in members]
        messages = self.context.referee.messages(episode.row.prompt, responses, list(range(len(members))), reference)
        prompt = render_chat(self.context.tokenizer, messages)
        num_tokens = None
        if self.max_prompt_tokens is not None:
            num_tokens = len(self.context.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return JudgeTask(index, members, prompt, num_tokens)

    def _judge(self, tasks: list[JudgeTask]) -> None:
        """Generates every task's judgment in one engine call and parses it into group answer indices."""
        if not tasks:
            return
        with timed("judge"), torch.no_grad():  # the engine already avoids gradients; this covers custom engines
            texts = self.context.engine.generate([t.prompt for t in tasks], 1, self.sampling).texts
        for task, text in zip(tasks, texts, strict=True):
            local = read_verdict(self.context.referee, text, list(range(len(task.members))), task.prompt)
            if local.parsed:  # positions in the chunk -> answer indices in the group
                local = Verdict(tuple(tuple(sorted(task.members[p] for p in tier)) for tier in local.tiers))
            task.verdict = local

    # ---- scores, rewards and metrics ----------------------------------------------------------------------------

    def _scores(self, episode: Episode, tasks: list[JudgeTask]) -> list[float]:
        g = len(episode.completions)
        judgments = [t.verdict.tiers for t in tasks if t.verdict is not None and t.verdict.parsed]
        scores = [math.nan if s is None else s for s in borda_scores(judgments, g)]
        episode.notes[self.name] = GroupJudgment(list(scores), len(tasks), len(judgments))
        if episode.row.kind != "open":
            return scores
        return length_tiebreak(scores, _lengths(episode), self.length_tiebreak)

    def _metrics(
        self, episodes: Sequence[Episode], tasks: list[JudgeTask], scores: list[list[float]]
    ) -> dict[str, float]:
        open_rows = [i for i, e in enumerate(episodes) if e.row.kind == "open"]
        open_tasks = [t for t in tasks if episodes[t.episode].row.kind == "open"]
        out = failure_metrics([t.verdict for t in open_tasks])
        answers = [s for i in open_rows for s in scores[i]]
        valid = [[s for s in scores[i] if not math.isnan(s)] for i in open_rows]
        out["judgments"] = float(len(open_tasks))
        out["chunk_size_mean"] = _mean([float(len(t.members)) for t in open_tasks])
        over = [t for t in tasks if t.num_tokens is not None and t.num_tokens > self.max_prompt_tokens]
        out["over_budget"] = float(len(over))
        out["unranked_frac"] = _mean([float(math.isnan(s)) for s in answers])
        out["skipped_group_frac"] = _mean([float(not v) for v in valid])
        out["score_spread"] = _mean([_std(v) for v in valid if len(v) >= 2])
        if self.cross_check_verifiable:
            out.update(self._cross_check(episodes, tasks, scores))
        return out

    def _verifiers(self) -> list[RewardCallback]:
        return [r for r in self.context.rewards if r is not self and "verifiable" in r.kinds]

    def _cross_check(
        self, episodes: Sequence[Episode], tasks: list[JudgeTask], scores: list[list[float]]
    ) -> dict[str, float]:
        """Agreement of self-judge scores with the verifier's split of verifiable groups (logged, never rewarded)."""
        rows = [i for i, e in enumerate(episodes) if e.row.kind == "verifiable"]
        if not rows:
            return {}
        chosen = [episodes[i] for i in rows]
        gold = combine_rewards([(r.weight, r.score(chosen).rewards.float()) for r in self._verifiers()])  # [n, G]
        pairwise, top1 = [], []
        for row_pos, i in enumerate(rows):
            ranked = [j for j, s in enumerate(scores[i]) if not math.isnan(s) and not math.isnan(gold[row_pos, j])]
            utilities = [gold[row_pos, j].item() for j in ranked]
            if len(set(utilities)) < 2:
                continue  # all right or all wrong: no split to agree with
            pred = _tiers_of([scores[i][j] for j in ranked])
            pairwise.append(pairwise_accuracy(pred, utilities))
            # Deterministic under ties: every answer sharing the top score must be a best one.
            top1.append(float(all(utilities[p] == max(utilities) for p in pred[0])))
        verifiable_tasks = [t.verdict for t in tasks if episodes[t.episode].row.kind == "verifiable"]
        return {
            "cross_check/pairwise_agreement": _mean(pairwise),
            "cross_check/top1_correct": _mean(top1),
            "cross_check/groups": float(len(pairwise)),
            "cross_check/parse_failure_rate": failure_metrics(verifiable_tasks)["parse_failure_rate"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.setstate(as_rng_state(state["rng"]))


def _tiers_of(values: Sequence[float]) -> tuple[tuple[int, ...], ...]:
    """Scores as a tiered ranking (equal scores share a tier), best first."""
    levels = sorted(set(values), reverse=True)
    return tuple(tuple(i for i, v in enumerate(values) if v == level) for level in levels)


def _lengths(episode: Episode) -> list[int]:
    """Answer lengths in tokens when the rollout kept the ids, else in characters."""
    ids = episode.completion_ids
    return [len(c) for c in ids] if ids else [len(c) for c in episode.completions]


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"SelfJudge: {name} must be {requirement}, got {value!r}")


__all__ = ["GroupJudgment", "JudgeTask", "SelfJudge", "ShuffleMode", "length_tiebreak", "split_even"]
