"""Where the preference rows' signal is lost: referee-only GRPO from one warm start, one setting changed at a time.

``python -m tools.evidence.diagnose --warm build/evidence/warm_start_0`` trains the referee run (preference rows
only, :func:`tools.evidence.runs.train_run`) once per variant and prints, per variant, what GRPO saw (the share of
preference groups whose G rewards are all equal, so that every advantage is 0; the mean within-group spread of the
rewards; the judgments' sampled accuracy) and what it achieved (held-out judging accuracy before and after).
Results go to ``docs/evidence/diagnosis.json`` and ``diagnosis.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.evidence.runs import RLConfig

VARIANTS: dict[str, dict[str, Any]] = {
    "as_documented": {},
    "shared_orders": {"preference_orders": "shared"},
    "temperature_0.3": {"temperature": 0.3},
    "lr_2e-4": {"lr": 2e-4},
    "rows_x3": {"referee_rows": 6},
    "rows_x3_lr_2e-4": {"referee_rows": 6, "lr": 2e-4},
    "g8": {"num_generations": 8},
    "t0.3_lr_2e-4": {"temperature": 0.3, "lr": 2e-4},
    "t0.5_lr_1e-4": {"temperature": 0.5, "lr": 1e-4},
    "t0.3_rows_x3_lr_2e-4": {"temperature": 0.3, "referee_rows": 6, "lr": 2e-4},
    "consistent": {"preference_consistency": True},
    "consistent_lr_1e-4": {"preference_consistency": True, "lr": 1e-4},
    "consistent_t0.5_lr_1e-4": {"preference_consistency": True, "temperature": 0.5, "lr": 1e-4},
    "consistent_rows_x3": {"preference_consistency": True, "referee_rows": 6},
    "big_batch_lr_1e-4": {"referee_rows": 12, "num_generations": 8, "lr": 1e-4},
    "big_batch_lr_3e-4": {"referee_rows": 12, "num_generations": 8, "lr": 3e-4},
}
"""One setting changed at a time from the documented run (2 preference rows per step, G = 4, mirrored orders,
rollouts at temperature 1.0, AdamW at 5e-5), then the combinations the single changes point to: colder rollouts with
larger steps, J1's consistency rule (a verdict is rewarded only when both presentation orders agree on it), and
12 times the judgments per step (12 rows x G = 8; run with ``--steps 60``)."""


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v == v]  # NaN-free
    return statistics.fmean(values) if values else None


def signal(steps: list[dict[str, float]], start: int, stop: int) -> dict[str, float | None]:
    """What GRPO saw on the preference rows over steps ``[start, stop)``."""
    window = steps[start:stop]
    pick = lambda key: _mean([s[key] for s in window if key in s])  # noqa: E731
    return {
        "zero_variance_frac": pick("groups/preference_zero_variance_frac"),
        "group_spread": pick("reward/preference_group_spread"),
        "sampled_accuracy": pick("reward/preference_reward/referee_accuracy"),
        "parse_failure_rate": pick("reward/preference_reward/parse_failure_rate"),
        "rows_per_step": pick("rows/preference"),
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    steps, history = result["steps"], result["history"]
    third = max(len(steps) // 3, 1)
    return {
        "all_steps": signal(steps, 0, len(steps)),
        "first_third": signal(steps, 0, third),
        "last_third": signal(steps, len(steps) - third, len(steps)),
        "judging_curve": [(h["step"], h["referee_accuracy"]) for h in history],
        "judging_gain": history[-1]["referee_accuracy"] - history[0]["referee_accuracy"],
        "seconds": result["seconds"],
    }


def solve_prompt(prompt: str) -> int:
    a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def anatomy(model_dir: str, files: dict[str, str]) -> dict[str, float]:
    """Why held-out judgments are wrong: the referee's own answer (the first ``\\boxed{}`` of a judgment) against
    the truth, and its ranking against its own answer (greedy, both presentation orders)."""
    from transformers import AutoModelForCausalLM

    from tools.evidence.evaluate import HeldOut
    from tools.evidence.world import REFEREE, answer_of
    from urpo.args import ModelArgs
    from urpo.engines.hf_engine import complete
    from urpo.judging import read_verdict
    from urpo.models import load_tokenizer
    from urpo.prompts import render_chat
    from urpo.ranking import pairwise_accuracy
    from urpo.referee_eval import judging_prompts

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = load_tokenizer(ModelArgs(name_or_path=model_dir))
    rows = HeldOut.load(files).preference
    prompts = judging_prompts(rows, REFEREE, lambda m: render_chat(tokenizer, m))
    texts = complete(model, tokenizer, prompts, max_new_tokens=32)
    own_right = right = right_own_right = first_named_a = 0
    for i, text in enumerate(texts):
        row, order = rows[i // 2], ([0, 1] if i % 2 == 0 else [1, 0])
        own = answer_of(text.split(" ")[0])
        verdict = read_verdict(REFEREE, text, order, prompts[i])
        correct = verdict.parsed and pairwise_accuracy(verdict.tiers, row.scores) == 1.0
        own_is_right = own == solve_prompt(row.prompt)
        own_right += own_is_right
        right += correct
        right_own_right += correct and own_is_right
        first_named_a += verdict.parsed and set(verdict.tiers[0]) == {order[0]}
    n = len(texts)
    return {
        "judging_accuracy": right / n,
        "own_answer_right": own_right / n,
        "accuracy_when_own_right": right_own_right / max(own_right, 1),
        "names_first_shown_first": first_named_a / n,
    }


def position_biased(warm_dir: Path, out: Path, steps: int = 150, seed: int = 0) -> Path:
    """A copy of a warm start taught to always rank the FIRST shown answer best (its own answer and checks kept):
    a judge at chance, 50% over both orders, like the warm start one AVX-512 CPU produced. Reused when present."""
    import torch
    from transformers import AutoModelForCausalLM

    from tools.evidence.warm_start import WarmStartConfig, encode, judge_example, train_cycle
    from tools.evidence.world import REFEREE, WorldConfig, split_problems
    from urpo.args import ModelArgs
    from urpo.models import load_tokenizer

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(warm_dir)
    tokenizer = load_tokenizer(ModelArgs(name_or_path=str(warm_dir)))
    rng, problems, cfg = random.Random(f"biased:{seed}"), split_problems(WorldConfig()).get("warm"), WarmStartConfig()
    data = []
    for _ in range(steps * cfg.batch_size):
        messages, target = judge_example(rng.choice(problems), 0.0, rng)
        biased = re.sub(r"<ranking>.*</ranking>", f"{REFEREE.open_tag}A > B{REFEREE.close_tag}", target)
        data.append(encode(tokenizer, messages, biased))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr / 2, weight_decay=0.01)
    train_cycle(model, optimizer, data, steps, cfg.lr / 2, tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


TABLE_HEAD = (
    "variant",
    "settings",
    "seed",
    "zero-variance groups",
    "reward spread",
    "sampled acc. (first → last third)",
    "held-out judging (start → end)",
    "gain (points)",
)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table_row(row: dict[str, Any]) -> list[str]:
    every, first, last, curve = row["all_steps"], row["first_third"], row["last_third"], row["judging_curve"]
    spread = "n/a" if every["group_spread"] is None else f"{every['group_spread']:.3f}"
    return [
        row["variant"],
        json.dumps(row["settings"]) or "{}",
        str(row["seed"]),
        _percent(every["zero_variance_frac"]),
        spread,
        f"{_percent(first['sampled_accuracy'])} → {_percent(last['sampled_accuracy'])}",
        f"{_percent(curve[0][1])} → {_percent(curve[-1][1])}",
        f"{100 * row['judging_gain']:+.1f}",
    ]


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    lines += ["| " + " | ".join(_table_row(row)) + " |" for row in rows.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tools.evidence.run import schedule
    from tools.evidence.world import WorldConfig, write_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=Path, required=True, help="a warm start folder (tools.evidence.warm_start)")
    parser.add_argument(
        "--position-biased",
        action="store_true",
        help="first teach the warm start to always rank the first shown answer best (a judge at chance)",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=RLConfig.steps)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("build/evidence"))
    parser.add_argument("--out", type=Path, default=Path("docs/evidence"))
    args = parser.parse_args(argv)
    files = {k: str(v) for k, v in write_world(args.work / "world", WorldConfig()).items()}
    if args.position_biased:
        args.warm = position_biased(args.warm, args.work / f"{args.warm.name}_position_biased")
    tasks = {}
    for name in args.variants:
        for seed in args.seeds:
            rl = replace(RLConfig(steps=args.steps), **VARIANTS[name])
            tasks[f"{name}/{seed}"] = {
                "kind": "referee",
                "seed": seed,
                "warm_dir": str(args.warm),
                "files": files,
                "rl": asdict(rl),
                "deps": [],
                "save_dir": str(args.work / f"diag_{args.warm.name}_{name}_{seed}"),
            }
    start = time.time()
    results, _ = schedule(tasks, args.workers)  # no warm starts here, so no gate to fail
    rows = {
        key: {
            "variant": key.split("/")[0],
            "seed": results[key]["seed"],
            "settings": VARIANTS[key.split("/")[0]],
            **summarize(results[key]),
        }
        for key in tasks
    }
    for key, task in tasks.items():
        rows[key]["anatomy_after"] = anatomy(task["save_dir"], files)
    warm = anatomy(str(args.warm), files)
    document = {
        "warm": str(args.warm),
        "steps": args.steps,
        "wall_seconds": time.time() - start,
        "rows": rows,
        "warm_anatomy": warm,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "diagnosis_position_biased" if args.position_biased else "diagnosis"
    (args.out / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rows))
    print(markdown(rows))
    print("warm start:", warm)
    for key, row in rows.items():
        print(key, row["anatomy_after"])
    return document


if __name__ == "__main__":
    main()
