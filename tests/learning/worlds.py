"""Small worlds with a known truth, in which each URPO mechanism must show learning on held-out rows.

The referee world: a preference row asks for ``What is a + b?`` and shows two responses, the solved answer
(``\\boxed{12}``) and a non-answer (``I do not know.``); the gold prefers the answer. A tiny model is first taught
only the verdict format, with verdicts drawn at random, so it starts as a judge at chance (50% over both
presentation orders); GRPO on preference rows alone must then teach it to judge problems it never saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from urpo.data.schema import PreferenceRow
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
        rows.append(PreferenceRow(source=source, index=index, prompt=f"What is {a} + {b}?", responses=responses, scores=scores))
    return rows


def split_pairs(seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint problems for the format warm start, for RL and for the held-out evaluation."""
    pairs = [(a, b) for a in range(10, 60) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    return pairs[:150], pairs[150:300], pairs[300:380]


def teach_format(model, tokenizer, rows: Sequence[PreferenceRow], steps: int, seed: int, lr: float = 3e-3) -> None:
    """Supervised steps on judging prompts whose target verdict is a RANDOM order: the format, not the judging."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = []
        for row in rng.sample(list(rows), 16):
            order = [0, 1] if rng.random() < 0.5 else [1, 0]
            verdict = " > ".join(rng.sample(REFEREE.labels(2), 2))
            prompt = render_chat(tokenizer, REFEREE.messages(row.prompt, row.responses, order))
            target = f"{REFEREE.open_tag}{verdict}{REFEREE.close_tag}"
            batch.append((tokenizer(prompt)["input_ids"], tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]))
        loss = _supervised_loss(model, batch, tokenizer.pad_token_id)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _supervised_loss(model, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    width = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), width), pad_id)  # [B, T]
    labels = torch.full((len(batch), width), -100)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for i, (prompt, target) in enumerate(batch):
        seq = prompt + target
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(target)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


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
