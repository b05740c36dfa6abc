"""The warm start: a tiny Qwen2 trained briefly from scratch, offline, to be an imperfect player and referee.

It is supervised on the ``warm`` pool of the world (never on RL or held-out problems): solved problems of both
operations (``What is 17 - 5?`` -> ``\\boxed{12}``) and judgments of candidate pairs rendered with the same
referee template RL uses (-> ``<ranking>B > A</ranking>``). A share of the targets is wrong on purpose (a
distractor answer, a flipped ranking), and training stops early, so the model starts imperfect at both roles.

Before RL may start, the warm start must reach stated targets in both roles on a ``check`` pool it never trained on
(:class:`WarmStartConfig`: ``target_solve``, ``target_judge``); it trains on in shorter cycles until it does. A draw
that still misses is replaced by another draw of the same recipe (its own initialisation and example order), and
when every draw misses the seed raises :class:`WarmStartError`. (Without the gate one CPU's float path once gave a
judge at chance, 50%, and every conclusion drawn from RL on it changed.)

Run alone: ``python -m tools.evidence.warm_start OUT_DIR [--seed 0] [--steps 600]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tools.evidence.world import (
    DISTRACTOR_OFFSETS,
    OPEN_OP,
    PLAYER,
    REFEREE,
    VERIFIABLE_OP,
    Problem,
    Split,
    WorldConfig,
    boxed,
    candidates,
    split_problems,
)
from tools.tiny_model import CHATML
from urpo.data.schema import OpenRow
from urpo.prompts import render_chat
from urpo.referee import shuffled_order

WORD_TOKENS = [
    "\\boxed{",
    "<ranking>",
    "</ranking>",
    "[User Prompt]",
    "[End of User Prompt]",
    *(f"[{end}Response {label}]" for label in "ABCD" for end in ("", "End of ")),
]
"""Kept whole (plain added tokens, not special: decoding keeps them), so answers and verdicts are a few tokens."""


@dataclass(frozen=True)
class WarmStartConfig:
    """Model size and the brief supervised training that makes the warm start."""

    hidden: int = 128
    """Hidden size; 4 heads of 32 dimensions (head dim >= 32 keeps it vLLM-compatible)."""
    layers: int = 2
    """Decoder layers."""
    steps: int = 1500
    """Optimizer steps of the first supervised cycle: past the point where solving 'clicks' (about step 700) but
    short of mastery, so both roles stay imperfect."""
    batch_size: int = 64
    """Examples per step. At 32 (half the compute), two of two seeds solved up to 80% of the check problems after
    2700 steps but still judged at chance (47-52%): the gate failed them."""
    lr: float = 2e-3
    """Peak learning rate of a one-cycle schedule (AdamW)."""
    target_solve: float = 0.5
    """Gate: greedy accuracy the warm start must reach on the check problems of EACH operation before RL starts."""
    verdict_noise: float = 0.5
    """Share of judging examples whose verdict is a coin flip; the reasoning before it (the referee's own answer
    and a yes/no check of each candidate) is always taught. 0 ranks every example by closeness to its own answer
    (the referee then judges as well as it solves, and its sampled verdict follows its checks: GRPO has little
    to sharpen); 1 concludes every example by a coin flip (a judge at chance whose verdict is unlinked to its
    checks: GRPO did not discover the link, docs/evidence.md); in between, the verdict follows the checks with
    probability ``1 - noise / 2``, so the referee samples its verdict uncertainly and the preference rows can make
    it sure. The default, 0.5, is the setting under which URPO's referee gained held-out judging in RL
    (docs/evidence.md)."""
    target_judge: float = 0.65
    """Gate while ``verdict_noise < 1``: greedy judging accuracy (both presentation orders) it must reach on the
    check pairs; 0.5 is chance, and also what a judge that always names the same position gets."""
    target_verdicts: float = 0.95
    """Gate with ``verdict_noise = 1`` (random verdicts): share of check judgments (greedy, both orders) that parse
    as a ranking. (Their greedy verdicts may all name one position, since both are equally likely to the model:
    what GRPO needs is the sampled verdicts, which are coin flips by construction.)"""
    extra_steps: int = 300
    """Steps of each further cycle (peak ``lr / 2``) while a target is missed."""
    max_extra_cycles: int = 4
    """Further cycles before this draw of the warm start misses its gate."""
    draws: int = 2
    """Warm starts drawn for one seed, each from its own initialisation and example order, until one passes the
    gate; when every draw misses, the seed fails loudly (:class:`WarmStartError`). A draw whose judging stalls
    (its check of a candidate against its own answer stays at a position guess) rarely recovers with more cycles
    of the same training, while another draw of the same recipe passes as often as the first: so a seed keeps the
    recipe every table row shares and loses no more than its first draw (``docs/evidence.md``)."""
    judge_share: float = 0.5
    """Share of examples that are judging tasks (the rest: solved problems)."""
    solve_noise: float = 0.1
    """Share of solved examples whose target answer is a wrong one."""
    judge_noise: float = 0.05
    """Share of judging examples where the referee's own answer (and so its verdict) is a wrong one."""

    def targets(self) -> dict[str, float]:
        """The check scores the warm start must reach before RL: solving both operations, and judging right, or,
        for a judge at chance (``verdict_noise`` 1) that RL must teach its verdict, judging in a form that parses."""
        wanted = {"open_accuracy": self.target_solve, "verifiable_accuracy": self.target_solve}
        if self.verdict_noise < 1:
            wanted["referee_accuracy"] = self.target_judge
        else:
            wanted["referee_parsed"] = self.target_verdicts
        return wanted


# ---- the tokenizer and the model -------------------------------------------------------------------------------


def tokenizer_corpus(problems: list[Problem], rng: random.Random) -> list[str]:
    """Texts the BPE tokenizer is trained on: player and referee prompts and their answers."""
    texts = [CHATML]
    for problem in problems[:400]:
        values = candidates(problem, 2, True, rng)
        texts.append(problem.prompt + " " + boxed(problem.truth))
        texts += [m["content"] for m in REFEREE.messages(problem.prompt, [boxed(v) for v in values], [0, 1])]
        answers = f"{boxed(problem.truth)} {boxed(values[0])} no {boxed(values[1])} yes"
        texts.append(f"<|im_start|>assistant\n{answers} <ranking>B > A</ranking>")
    return texts


def build_tokenizer(problems: list[Problem], seed: int):
    """A byte-level BPE tokenizer with one token per digit (so numbers are spelled, not memorised as wholes)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(problems, random.Random(seed)), trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in WORD_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(tokenizer, cfg: WarmStartConfig, seed: int):
    """A randomly initialised tiny Qwen2 causal LM with tied embeddings (initialised from ``seed``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = max(cfg.hidden // 32, 1)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


# ---- supervised examples ---------------------------------------------------------------------------------------


def solve_example(problem: Problem, noise: float, rng: random.Random) -> tuple[list[dict], str]:
    """A solved problem as (player messages, target), the target wrong with probability ``noise``."""
    answer = problem.truth
    if rng.random() < noise:
        answer = max(0, answer + rng.choice(DISTRACTOR_OFFSETS))
    return PLAYER.messages(OpenRow(source="warm", index=0, prompt=problem.prompt)), boxed(answer)


def judge_example(
    problem: Problem, noise: float, rng: random.Random, verdict_noise: float = 0.0
) -> tuple[list[dict], str]:
    """A judging task over a shuffled pair of candidates (one of them right) as (referee messages, target).

    The target reasons before its verdict, as the referee template asks: its own answer, then each shown candidate
    with ``yes`` / ``no`` (equal to its answer or not), then the ranking by closeness to its answer:
    ``\\boxed{12} \\boxed{14} no \\boxed{12} yes <ranking>B > A</ranking>``. (A tiny model trained briefly cannot
    compare two numbers it has not written next to each other; spelled out, the check is learned in minutes.)
    With probability ``noise`` the referee's own answer is a wrong one, and its checks and ranking follow it: a
    consistent referee that makes an arithmetic slip. With probability ``verdict_noise`` the ranking is a coin flip
    instead (the reasoning before it is kept).
    """
    values = candidates(problem, 2, True, rng)
    order = shuffled_order(2, rng)
    own = problem.truth
    if rng.random() < noise:
        own = max(0, own + rng.choice(DISTRACTOR_OFFSETS))
    shown = [values[i] for i in order]
    # No draw at 0 or 1, so those settings keep the examples (and the warm starts) they always had.
    flip = verdict_noise >= 1 or (verdict_noise > 0 and rng.random() < verdict_noise)
    ranking = shuffled_order(len(shown), rng) if flip else None
    return REFEREE.messages(problem.prompt, [boxed(v) for v in values], order), judge_target(own, shown, ranking)


def judge_target(own: int, shown: Sequence[int], ranking: Sequence[int] | None = None) -> str:
    """The referee's reasoning and verdict: its own answer, a yes/no check of each shown candidate against it, and
    the ranking by closeness to it (stable: ties keep the shown order), or ``ranking`` (shown positions, best first)
    when given."""
    checks = " ".join(f"{boxed(v)} {'yes' if v == own else 'no'}" for v in shown)
    labels = REFEREE.labels(len(shown))
    ranked = list(ranking) if ranking is not None else sorted(range(len(shown)), key=lambda k: abs(shown[k] - own))
    verdict = f"{REFEREE.open_tag}{' > '.join(labels[k] for k in ranked)}{REFEREE.close_tag}"
    return f"{boxed(own)} {checks} {verdict}"


def encode(tokenizer, messages: list[dict], target: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt, answer


def examples(problems: list[Problem], cfg: WarmStartConfig, tokenizer, rng: random.Random, count: int):
    """``count`` encoded examples drawn from the warm pool, solving and judging mixed by ``judge_share``."""
    out = []
    for _ in range(count):
        problem = rng.choice(problems)
        if rng.random() < cfg.judge_share:
            out.append(encode(tokenizer, *judge_example(problem, cfg.judge_noise, rng, cfg.verdict_noise)))
        else:
            out.append(encode(tokenizer, *solve_example(problem, cfg.solve_noise, rng)))
    return out


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded inputs; the loss covers only the target tokens."""
    width = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), width), pad_id)  # [B, T]
    labels = torch.full((len(batch), width), -100)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for i, (prompt, answer) in enumerate(batch):
        seq = prompt + answer
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---- training --------------------------------------------------------------------------------------------------


class WarmStartError(RuntimeError):
    """The warm start missed its targets after every further cycle: RL from it would not test what it should."""


def train_cycle(model, optimizer, data, steps: int, max_lr: float, pad_id: int) -> list[float]:
    """One one-cycle schedule of ``steps`` supervised steps over ``data``; returns the loss of every step."""
    for group in optimizer.param_groups:
        group.pop("initial_lr", None)  # a fresh schedule over a used optimizer starts from its own warm-up
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses, size = [], len(data) // steps
    for step in range(steps):
        batch = collate(data[step * size : (step + 1) * size], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def check_set(split: Split, world: WorldConfig):
    """The gate's problems as a :class:`~tools.evidence.evaluate.HeldOut` (solving both operations, judging pairs)."""
    from tools.evidence.evaluate import HeldOut
    from tools.evidence.world import preference_records, truth_record
    from urpo.data.formats import adapt_generic

    problems = split.get("check")
    prefs = preference_records(problems, world, random.Random(f"check:{world.seed}"))
    return HeldOut(
        open=[truth_record(p) for p in split.get("check", OPEN_OP)],
        verifiable=[truth_record(p) for p in split.get("check", VERIFIABLE_OP)],
        preference=[adapt_generic(r, source="check", index=i) for i, r in enumerate(prefs)],
    )


def missed_targets(scores: dict[str, float], cfg: Any) -> list[str]:
    """The targets of ``cfg`` (a config with ``targets()``) that check scores miss, as readable lines (empty: none)."""
    return [f"{k} {scores[k]:.3f} < {v:.2f}" for k, v in cfg.targets().items() if scores[k] < v]


def train(model, tokenizer, split: Split, cfg: WarmStartConfig, seed: int, world: WorldConfig, draw: int = 0) -> dict:
    """Supervised training, then further shorter cycles until the check scores reach the targets.

    Returns the losses and the check scores after each cycle. Raises :class:`WarmStartError` when the targets are
    still missed after ``max_extra_cycles`` (the warm start's float path can leave a judge at chance: seen once,
    on another CPU; RL from it would then measure something else than the table says).
    """
    from tools.evidence.evaluate import evaluate

    rng, warm, held = random.Random(example_seed(seed, draw)), split.get("warm"), check_set(split, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    losses, checks = [], []
    for cycle in range(1 + cfg.max_extra_cycles):
        steps, lr = (cfg.steps, cfg.lr) if cycle == 0 else (cfg.extra_steps, cfg.lr / 2)
        data = examples(warm, cfg, tokenizer, rng, steps * cfg.batch_size)
        losses += train_cycle(model, optimizer, data, steps, lr, tokenizer.pad_token_id)
        scores = evaluate(model, tokenizer, held)
        checks.append({"step": len(losses), **scores})
        if not missed_targets(scores, cfg):
            return {"losses": losses, "checks": checks}
    missed, which = ", ".join(missed_targets(checks[-1], cfg)), f"seed {seed}, draw {draw}" if draw else f"seed {seed}"
    raise WarmStartError(
        f"warm start ({which}) missed its targets after {len(losses)} steps: {missed} on the check set; "
        f"every check: {checks}"
    )


DRAW_STRIDE = 1_000_003
"""Draw ``k`` of seed ``s`` initialises its model from ``s + k * DRAW_STRIDE`` (draw 0: from ``s``, as before draws
existed), so no two (seed, draw) pairs of any sensible run share an initialisation."""


def init_seed(seed: int, draw: int) -> int:
    """The model initialisation of draw ``draw`` of seed ``seed``."""
    return seed + draw * DRAW_STRIDE


def example_seed(seed: int, draw: int) -> str:
    """The seed of the example stream of draw ``draw`` of seed ``seed`` (draw 0 keeps the stream it always had)."""
    return f"warm:{seed}" if draw == 0 else f"warm:{seed}:draw{draw}"


def _settings(record: dict) -> dict:
    """What decides a draw's training: its seed, world and settings other than the number of draws."""
    return {
        "seed": record["seed"],
        "world": record["world"],
        "config": {k: v for k, v in record["config"].items() if k != "draws"},
    }


def _stamp(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def build_draw(out: Path, seed: int, draw: int, cfg: WarmStartConfig, world: WorldConfig, record: dict) -> dict:
    """Trains and gates draw ``draw`` of seed ``seed``; saves a passing one into ``out`` and returns its record.

    A draw that misses its gate is saved, for inspection, into ``out/draw_<k>`` with ``warm_start_failed.json``, and
    raises :class:`WarmStartError`; found there again with the same settings, it raises again without training
    (training is seeded and single-threaded, so a retry on the same machine and software would miss again)."""
    start, folder = time.time(), out / f"draw_{draw}"
    failed = _stamp(folder / "warm_start_failed.json")
    if failed and _settings(failed) == _settings(record):
        raise WarmStartError(f"{failed['error']} (reused: {folder / 'warm_start_failed.json'})")
    split = split_problems(world)
    tokenizer = build_tokenizer(split.get("warm") + split.get("rl_solve"), seed=world.seed)
    model = build_model(tokenizer, cfg, init_seed(seed, draw))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        trained = train(model, tokenizer, split, cfg, seed, world, draw)
    except WarmStartError as error:  # keep the model that missed, for inspection, and the failure (reused above)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        stamp = {**record, "draw": draw, "error": str(error)}
        (folder / "warm_start_failed.json").write_text(json.dumps(stamp, indent=1))
        raise
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    losses = trained["losses"]
    return {
        **record,
        "draw": draw,
        "train_steps": len(losses),
        "checks": trained["checks"],
        "final_loss": sum(losses[-20:]) / min(20, len(losses)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.time() - start,
    }


def build_warm_start(
    out: Path, seed: int = 0, cfg: WarmStartConfig = WarmStartConfig(), world: WorldConfig = WorldConfig()
) -> dict:
    """Builds, trains, gates and saves the warm start of ``seed`` into ``out`` (``ModelArgs(name_or_path=out)``).

    Draws 0, 1, ... (:attr:`WarmStartConfig.draws`) are tried in turn until one passes its gate; the record names
    the passing ``draw`` and the errors of those before it (``missed_draws``). When every draw misses, it raises
    :class:`WarmStartError` naming each. A folder whose ``warm_start.json`` holds a warm start of the same seed and
    settings that passed at a draw this config allows is reused (``reused``), as is each missed draw (see
    :func:`build_draw`): adding seeds, or draws, to a finished run costs only what is new.
    """
    record = {"seed": seed, "config": asdict(cfg), "world": asdict(world)}
    saved = _stamp(out / "warm_start.json")
    if saved and _settings(saved) == _settings(record) and saved.get("draw", 0) < cfg.draws:
        return {**saved, "reused": True}  # its "seconds" are its training's
    start, missed = time.time(), []
    for draw in range(cfg.draws):
        try:
            passed = build_draw(out, seed, draw, cfg, world, record)
        except WarmStartError as error:
            missed.append(str(error))
            continue
        passed = {**passed, "missed_draws": missed, "seconds": time.time() - start}  # with the draws that missed
        (out / "warm_start.json").write_text(json.dumps(passed, indent=1))
        return passed
    if len(missed) == 1:
        raise WarmStartError(missed[0])
    raise WarmStartError(f"every one of the {cfg.draws} draws of warm start (seed {seed}) missed: {' | '.join(missed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=WarmStartConfig.steps)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(build_warm_start(args.out, args.seed, WarmStartConfig(steps=args.steps)))


if __name__ == "__main__":
    main()
