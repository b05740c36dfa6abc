"""Small worlds with a known truth, in which each URPO mechanism must show learning on held-out rows.

The referee world: a preference row asks for ``What is a + b?`` and shows two responses, the solved answer
(``\\boxed{12}``) and a non-answer (``I do not know.``); the gold prefers the answer. A tiny model is first taught
the judging prompts and the verdict format, with verdicts drawn at random, so it starts as a judge at chance (50%
over both presentation orders); GRPO on preference rows alone must then teach it to judge problems it never saw.
The self-judge world is further down.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from urpo.data.schema import OpenRow, PreferenceRow
from urpo.engines.base import RolloutBatch
from urpo.prompts import render_chat
from urpo.referee import RefereeTemplate

REFEREE = RefereeTemplate(system=None, instruction="Rank the {n} responses, best first, as {example}.", reminder=None)
"""Verdict first and nothing else: the judgment is a handful of tokens, so a GRPO step takes a fraction of a second."""
NON_ANSWERS = ("I do not know.", "No idea, sorry.", "Ask someone else.", "That is hard.")


def referee_rows(pairs: Sequence[tuple[int, int]], source: str, seed: int) -> list[PreferenceRow]:
    """One preference row per problem: the boxed sum (gold best) against a non-answer, in random source order."""
    rng = random.Random(seed)
    rows = []
    for index, (a, b) in enumerate(pairs):
        answer, non_answer = f"\\boxed{{{a + b}}}", rng.choice(NON_ANSWERS)
        flip = rng.random() < 0.5
        responses, scores = ((non_answer, answer), (0.0, 1.0)) if flip else ((answer, non_answer), (1.0, 0.0))
        rows.append(
            PreferenceRow(source=source, index=index, prompt=f"What is {a} + {b}?", responses=responses, scores=scores)
        )
    return rows


def split_pairs(seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint problems for the format warm start, for RL and for the held-out evaluation."""
    pairs = [(a, b) for a in range(10, 60) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    return pairs[:150], pairs[150:300], pairs[300:380]


def teach_format(
    model,
    tokenizer,
    rows: Sequence[PreferenceRow],
    seed: int,
    lr: float = 3e-3,
    pretrain_steps: int = 120,
    check_every: int = 40,
    max_polish_steps: int = 320,
    max_failure_rate: float = 0.05,
) -> float:
    """Supervised warm start on judging prompts whose target verdict is a RANDOM order: the format, not the judging.

    First ``pretrain_steps`` steps also model the prompt text, as pretraining would: the model learns what judging
    prompts look like (which response block a token sits in, that a boxed answer follows ``[Response X]``) but
    nothing that links a verdict to the responses, so it judges at chance. Without that a 2-layer model sits on a
    long plateau before it can read which block holds the answer (75+ supervised steps instead of 15-30).
    Then verdict-only steps polish the format until at most ``max_failure_rate`` of sampled verdicts fail to parse
    (checked every ``check_every`` steps). That matters: a judge whose verdicts often fail to parse spends its
    first GRPO steps on the format, and the format penalty, falling more on one verdict string than the other,
    turns it into a judge that always names one position, whose gradient then vanishes.

    Returns:
        The parse-failure rate of sampled verdicts reached.
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    _teach(model, tokenizer, rows, rng, optimizer, pretrain_steps, with_prompt=True)
    failures, polished = verdict_failure_rate(model, tokenizer, rows, seed), 0
    while failures > max_failure_rate and polished < max_polish_steps:
        _teach(model, tokenizer, rows, rng, optimizer, check_every, with_prompt=False)
        failures, polished = verdict_failure_rate(model, tokenizer, rows, seed), polished + check_every
    return failures


def _teach(model, tokenizer, rows, rng: random.Random, optimizer, steps: int, with_prompt: bool) -> None:
    model.train()
    for _ in range(steps):
        batch = []
        for row in rng.sample(list(rows), 16):
            order = [0, 1] if rng.random() < 0.5 else [1, 0]
            verdict = " > ".join(rng.sample(REFEREE.labels(2), 2))
            prompt = render_chat(tokenizer, REFEREE.messages(row.prompt, row.responses, order))
            target = f"{REFEREE.open_tag}{verdict}{REFEREE.close_tag}"
            batch.append((tokenizer(prompt)["input_ids"], tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]))
        verdict_loss, prompt_loss = _supervised_losses(model, batch, tokenizer.pad_token_id)
        (verdict_loss + prompt_loss if with_prompt else verdict_loss).backward()
        optimizer.step()
        optimizer.zero_grad()


def verdict_failure_rate(model, tokenizer, rows: Sequence[PreferenceRow], seed: int, count: int = 32) -> float:
    """Share of sampled verdicts (temperature 1, two per prompt, both orders of ``count`` rows) that fail to parse."""
    from urpo.args import SamplingArgs
    from urpo.engines.hf_engine import HFGenerateEngine
    from urpo.referee import ParsedRanking

    shown = [REFEREE.messages(r.prompt, r.responses, order) for r in rows[:count] for order in ([0, 1], [1, 0])]
    prompts = [render_chat(tokenizer, messages) for messages in shown]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        texts = HFGenerateEngine(lambda: model, tokenizer).generate(prompts, 2, SamplingArgs(max_new_tokens=12)).texts
    model.train()
    parsed = [REFEREE.parse(text, 2, prompts[i // 2]) for i, text in enumerate(texts)]
    return sum(not isinstance(p, ParsedRanking) for p in parsed) / len(parsed)


def _supervised_losses(
    model, batch: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token losses over the target tokens and over the prompt tokens of ``(prompt, target)`` pairs."""
    width = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), width), pad_id)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    in_target = torch.zeros((len(batch), width), dtype=torch.bool)  # [B, T]
    for i, (prompt, target) in enumerate(batch):
        seq = prompt + target
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        in_target[i, len(prompt) : len(seq)] = True
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, T-1]
    predicted = mask[:, 1:].bool()  # [B, T-1]: positions whose next token is real
    target, prompt = predicted & in_target[:, 1:], predicted & ~in_target[:, 1:]
    return losses[target].mean(), losses[prompt].mean()


def judging_accuracy(model, tokenizer, rows: Sequence[PreferenceRow]) -> float:
    """Greedy judging accuracy over both presentation orders (``urpo eval-referee``'s measure): 0.5 is chance."""
    from urpo.referee_eval import evaluate_referee, hf_generate

    model.eval()
    generate = hf_generate(model, tokenizer, max_new_tokens=12, temperature=None, batch_size=64)
    render = lambda messages: render_chat(tokenizer, messages)  # noqa: E731
    report = evaluate_referee(rows, ["all"] * len(rows), generate, REFEREE, render)
    model.train()
    return report["overall"]["accuracy"]


def save(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# ---- The self-judge world ---------------------------------------------------------------------------------------
# Open rows ask ``What is a + b?``; the truth, kept from the policy and its rewards, is that an answer to a sum
# should be a number: its quality is the share of its visible characters that are digits. The referee that scores
# the policy's answers is a scripted judge of KNOWN accuracy, reached through the real SelfJudge path (judging
# prompts, shuffles, parser, Borda aggregation): it ranks the shown answers by their true quality, except that a
# set share of its judgments are uniformly random rankings.


def open_rows(pairs: Sequence[tuple[int, int]], source: str) -> list[OpenRow]:
    """One open row per problem; nothing in the row tells the policy or the judge what a good answer is."""
    return [OpenRow(source=source, index=i, prompt=f"What is {a} + {b}?") for i, (a, b) in enumerate(pairs)]


def digit_share(answer: str) -> float:
    """The truth's quality of an answer: the share of its non-space characters that are digits (0 when empty)."""
    visible = [c for c in answer if not c.isspace()]
    return sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0


def is_correct(answer: str) -> bool:
    """An answer the truth accepts: mostly digits."""
    return digit_share(answer) > 0.5


_SHOWN = re.compile(r"\[Response ([A-Z])\]\n(.*?)\n\[End of Response \1\]", re.DOTALL)


class NoisyTruthJudge:
    """A judge whose error rate is known: it ranks the shown responses by :func:`digit_share`, best first, except
    that with probability ``error_rate`` a judgment is a uniformly random ranking. Ties in quality are broken at
    random (a position-biased tie-break would be a bias of its own). Seeded, so a run is reproducible."""

    def __init__(self, error_rate: float, template: RefereeTemplate, seed: int) -> None:
        self.error_rate, self.template, self.rng = error_rate, template, random.Random(seed)
        self.judgments = self.random_judgments = 0

    def __call__(self, prompt: str) -> str:
        shown = [body for _, body in _SHOWN.findall(prompt)]
        order = list(range(len(shown)))
        self.rng.shuffle(order)
        self.judgments += 1
        if self.rng.random() < self.error_rate:
            self.random_judgments += 1
        else:
            order.sort(key=lambda k: -digit_share(shown[k]))  # stable: equal qualities keep their random order
        labels = self.template.labels(len(shown))
        return f"{self.template.open_tag}{' > '.join(labels[k] for k in order)}{self.template.close_tag}"


class JudgeRoutingEngine:
    """The module's rollout engine, except that judging prompts (those that show ``[Response A]``) are answered
    by ``judge``: the player's answers come from the real policy, the self-judgments from a judge we control."""

    def __init__(self, policy_engine: Any, judge: NoisyTruthJudge) -> None:
        self.policy_engine, self.judge = policy_engine, judge

    def generate(self, prompts: Sequence[str], n: int, sampling: Any) -> RolloutBatch:
        judging = ["[Response A]" in p for p in prompts]
        if not any(judging):
            return self.policy_engine.generate(prompts, n, sampling)
        if not all(judging):
            raise AssertionError("a rollout call mixed player and judging prompts")
        tokenizer = self.policy_engine.tokenizer
        texts = [self.judge(p) for p in prompts for _ in range(n)]
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return RolloutBatch(
            prompt_ids=[encode(p) for p in prompts],
            completion_ids=[encode(t) + [tokenizer.eos_token_id] for t in texts],
            texts=texts,
            finish_reasons=["stop"] * len(texts),
        )

    def sync_weights(self) -> None:
        self.policy_engine.sync_weights()


def open_quality(
    model, tokenizer, rows: Sequence[OpenRow], samples: int, max_new_tokens: int, seed: int
) -> tuple[float, float]:
    """(share of correct answers, mean quality) of ``samples`` sampled answers per held-out row, seeded."""
    from urpo.args import SamplingArgs
    from urpo.engines.hf_engine import HFGenerateEngine
    from urpo.prompts import PlayerTemplate

    prompts = [render_chat(tokenizer, PlayerTemplate().messages(row)) for row in rows]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        engine = HFGenerateEngine(lambda: model, tokenizer)
        texts = engine.generate(prompts, samples, SamplingArgs(max_new_tokens=max_new_tokens)).texts
    return sum(map(is_correct, texts)) / len(texts), sum(map(digit_share, texts)) / len(texts)
