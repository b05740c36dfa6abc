"""urpo against TRL's GRPOTrainer: same model, prompts, G, completion length and CPU, steps interleaved.

    python tools/bench_trl.py --quick              # tiny model, < 3 minutes
    python tools/bench_trl.py --size 100m          # ~100M-parameter Qwen2 (hidden 768, 12 layers, vocab 32k)

Needs TRL 1.16 (``pip install 'urpo[baseline]'``) and, for the vLLM rows, the ``vllm`` extra (docs/rollout.md).
Every configuration runs in its own process, so its peak RSS (``ru_maxrss``) is its own. Each urpo configuration is
paired with a TRL process of the same precision, and the two take turns, one step each, while the other waits: both
see the same machine load, and neither competes with the other for the cores. The first step of each is a warm-up
and is not timed; step times are medians. Both sample exactly ``--length`` tokens per completion
(``min_new_tokens`` in HF generate and TRL, ``min_tokens`` in vLLM), so both do the same work. A benchmark, not a
test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers, heads, kv heads, ffn, vocab; head dim >= 32 everywhere, as vLLM's CPU attention needs
    "tiny": (64, 2, 2, 2, 128, 512),
    "small": (256, 4, 4, 2, 688, 4096),
    "100m": (768, 12, 12, 4, 2048, 32000),
}
TAG = "BENCH "


# ---- the shared model and prompts --------------------------------------------------------------------------------


def build_model(folder: Path, size: str) -> int:
    """A random Qwen2 with a byte-level BPE trained on the fly to the size's vocab; returns its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT))
    from tools.tiny_model import chatml_tokenizer, tiny_corpus

    hidden, layers, heads, kv_heads, ffn, vocab = SIZES[size]
    rng = random.Random(0)
    # Random words give the BPE trainer enough distinct merges to reach a 32k vocab.
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(vocab * 8)]
    corpus = tiny_corpus() + [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    tokenizer = chatml_tokenizer(corpus, vocab_size=vocab)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def bench_rows(count: int, three_kinds: bool = False) -> list:
    """Verifiable arithmetic rows; with ``three_kinds`` every 4-row block is 2 verifiable, 1 preference, 1 open."""
    from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow

    rows = []
    for i in range(count):
        a, b = i % 30, (7 * i) % 30
        if three_kinds and i % 4 == 2:
            rows.append(
                PreferenceRow(
                    source="bench",
                    index=i,
                    prompt=f"What is {a} + {b}?",
                    responses=(f"It is {a + b}.", f"It is {a + b + 1}."),
                    scores=(1.0, 0.0),
                )
            )
        elif three_kinds and i % 4 == 3:
            rows.append(OpenRow(source="bench", index=i, prompt=f"Write one sentence about the number {a + b}."))
        else:
            rows.append(VerifiableRow(source="bench", index=i, prompt=f"What is {a} + {b}?", answer=str(a + b)))
    return rows


def answer_reward(text: str, answer: str) -> float:
    """The reward both trainers use: 1 for the gold answer in the text, plus a small length term for variance."""
    return float(answer in text) + 0.001 * len(text)


def answer_reward_callback():
    """:func:`answer_reward` as urpo's reward callback for verifiable rows (built lazily: urpo imports torch)."""
    import torch

    from urpo.rewards.base import RewardCallback, RewardResult

    class AnswerReward(RewardCallback):
        default_kinds = ("verifiable",)

        def score(self, episodes):
            scores = [[answer_reward(c, e.row.answer) for c in e.completions] for e in episodes]
            return RewardResult(torch.tensor(scores))

    return AnswerReward()


# ---- workers: one configuration each, stepping when the coordinator says so -----------------------------------------


def _report(kind: str, **payload) -> None:
    print(TAG + kind + " " + json.dumps(payload), flush=True)


def _wait_for_go() -> None:
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(0)


def run_urpo(spec: dict) -> None:
    import lightning as L
    import torch

    from urpo.args import GRPOArgs, LoggingArgs, PolicyArgs, RolloutArgs, SamplingArgs, VLLMArgs
    from urpo.module import URPOModule

    class Stepper(L.Callback):
        def on_fit_start(self, trainer, module):
            module.policy.generation_config.min_new_tokens = spec["length"]  # HF engine: exactly `length` tokens
            _report("ready", seconds=time.perf_counter() - start)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            _wait_for_go()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            phases = {k: float(v) for k, v in m.items() if k.startswith(("time/", "mismatch/logp_abs_diff"))}
            _report("step", seconds=time.perf_counter() - self.t0, tokens=float(m["completion/tokens"]), **phases)

    start = time.perf_counter()
    rewards = [answer_reward_callback()]
    if spec["three_kinds"]:
        from urpo.rewards.preference import PreferenceReward
        from urpo.rewards.self_judge import SelfJudge

        rewards += [PreferenceReward(), SelfJudge()]
    L.seed_everything(0)
    module = URPOModule(
        PolicyArgs(spec["model"]),
        rewards=rewards,
        grpo=GRPOArgs(num_generations=spec["g"]),
        sampling=SamplingArgs(max_new_tokens=spec["length"]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0),
        rollout=RolloutArgs(
            engine=spec["engine"],
            vllm=VLLMArgs(
                kv_cache_memory_bytes=256 << 20, max_model_len=1024, sampling_kwargs={"min_tokens": spec["length"]}
            ),
        ),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )
    rows = bench_rows(spec["prompts"] * spec["steps"], spec["three_kinds"])
    batches = [rows[i : i + spec["prompts"]] for i in range(0, len(rows), spec["prompts"])]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=spec["steps"],
        precision=spec["precision"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Stepper()],
        default_root_dir=spec["workdir"],
    )
    trainer.fit(module, train_dataloaders=loader)
    _report("done", max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_trl(spec: dict) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from urpo.prompts import PlayerTemplate

    start = time.perf_counter()
    rows = bench_rows(spec["prompts"] * spec["steps"])
    # The very messages urpo renders for these rows, so both tokenize the same prompt text.
    data = Dataset.from_list([{"prompt": PlayerTemplate().messages(r), "answer": r.answer} for r in rows])

    def reward(completions, answer, **_):
        return [answer_reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    lengths: list[float] = []

    class Stepper(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            _report("ready", seconds=time.perf_counter() - start)

        def on_step_begin(self, args, state, control, **kw):
            _wait_for_go()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _report("step", seconds=time.perf_counter() - self.t0, tokens=float("nan"))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"),
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["prompts"] * spec["g"],
        num_generations=spec["g"],
        max_completion_length=spec["length"],
        generation_kwargs={"min_new_tokens": spec["length"]},
        learning_rate=1e-6,
        weight_decay=0.0,
        beta=0.0,
        num_iterations=1,
        use_cpu=True,
        bf16=spec["precision"].startswith("bf16"),
        use_vllm=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=spec["model"], reward_funcs=reward, args=config, train_dataset=data, callbacks=[Stepper()]
    )
    trainer.train()
    _report(
        "done",
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        mean_length=statistics.mean(lengths) if lengths else float("nan"),
    )


# ---- the coordinator ------------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, name: str, spec: dict, log: Path) -> None:
        self.name, self.spec, self.steps, self.final = name, spec, [], {}
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "PYTHONPATH": str(ROOT),
        }
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def expect(self, kind: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG + kind + " "):
                return json.loads(line[len(TAG) + len(kind) + 1 :])
        raise RuntimeError(f"{self.name} ended before '{kind}' (exit {self.proc.wait()}); see {self.log.name}")

    def step(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.steps.append(self.expect("step"))

    def finish(self) -> None:
        self.final = self.expect("done")
        self.proc.wait()
        self.log.close()

    def summary(self, length: int, completions: int) -> dict:
        timed = self.steps[1:]  # the first step warms up caches and allocators
        # The median: on a shared machine a single step can be stretched several-fold by other jobs.
        seconds = statistics.median(s["seconds"] for s in timed)
        tokens = [s["tokens"] for s in timed if s["tokens"] == s["tokens"]]
        tokens_per_step = statistics.mean(tokens) if tokens else self.final.get("mean_length", length) * completions
        return {
            "steps_per_s": 1 / seconds,
            "tokens_per_s": tokens_per_step / seconds,
            "seconds": seconds,
            "rss_gb": self.final["max_rss_mb"] / 1024,
            "tokens_per_step": tokens_per_step,
            "startup_s": self.ready,
            "mismatch": statistics.mean(s.get("mismatch/logp_abs_diff", float("nan")) for s in timed),
            "rollout_s": statistics.mean(s.get("time/rollout", float("nan")) for s in timed),
            "update_s": statistics.mean(s.get("time/update", float("nan")) for s in timed),
        }


def run_pair(urpo_spec: dict, trl_spec: dict, name: str, logs: Path) -> tuple[dict, dict]:
    ours = Worker(name, urpo_spec, logs / f"{name}.log")
    theirs = Worker(f"trl-{name}", trl_spec, logs / f"trl-{name}.log")
    ours.ready = ours.expect("ready")["seconds"]
    theirs.ready = theirs.expect("ready")["seconds"]
    for step in range(urpo_spec["steps"]):
        ours.step()
        theirs.step()
        mine, trl = ours.steps[-1]["seconds"], theirs.steps[-1]["seconds"]
        print(f"    step {step}: urpo {mine:.2f} s, TRL {trl:.2f} s", flush=True)
    ours.finish()
    theirs.finish()
    completions = urpo_spec["prompts"] * urpo_spec["g"]
    return ours.summary(urpo_spec["length"], completions), theirs.summary(urpo_spec["length"], completions)


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short completions: under 3 minutes")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default 100m; tiny with --quick")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--g", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--length", type=int, default=None, help="tokens per completion (default 64; 16 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration, 1st untimed (default 4)")
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated urpo configurations ENGINE-PRECISION, ENGINE in hf, vllm, urpo3 (the "
        "three-kind vLLM step), PRECISION in 32, bf16 (default: all five pairs; hf-32,vllm-32 with "
        "--quick)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        return run_trl(spec) if spec["engine"] == "trl" else run_urpo(spec)

    size = args.size or ("tiny" if args.quick else "100m")
    length, steps = args.length or (16 if args.quick else 64), args.steps or (3 if args.quick else 4)
    work = tempfile.mkdtemp(prefix="bench-trl-")
    try:
        run_all(args, size, length, steps, Path(work))
    except BaseException:
        print(f"worker logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


def run_all(args: argparse.Namespace, size: str, length: int, steps: int, work: Path) -> None:
    t0 = time.perf_counter()
    params = build_model(work / "model", size)
    base = {
        "model": str(work / "model"),
        "prompts": args.prompts,
        "g": args.g,
        "length": length,
        "steps": steps,
        "workdir": str(work),
    }
    precisions = {"32": "32-true", "bf16": "bf16-mixed"}
    results = []
    configs = args.configs or ("hf-32,vllm-32" if args.quick else "hf-32,vllm-32,urpo3-32,hf-bf16,vllm-bf16")
    for config in configs.split(","):
        engine, precision = config.split("-")
        spec = dict(
            base,
            engine="vllm" if engine == "urpo3" else engine,
            precision=precisions[precision],
            three_kinds=engine == "urpo3",
        )
        trl_spec = dict(base, engine="trl", precision=precisions[precision], three_kinds=False)
        print(f"  {config} ...", flush=True)
        ours, theirs = run_pair(spec, trl_spec, config, work)
        results.append((config, ours, theirs))
        print(f"  {config}: urpo {json.dumps(ours)}; TRL {json.dumps(theirs)}", flush=True)  # partial results
    table = format_table(results, size, params, base, machine(), time.perf_counter() - t0)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


def format_table(results, size, params, base, where, wall) -> str:
    names = {"hf": "urpo + HF generate", "vllm": "urpo + vLLM", "urpo3": "urpo + vLLM, 3 kinds (URPO step)"}
    lines = [
        (
            f"Machine: {where}. Model: Qwen2 '{size}', {params / 1e6:.1f}M parameters. Work per step: "
            f"{base['prompts']} prompts x G={base['g']} x {base['length']} tokens; median of {base['steps'] - 1} "
            f"timed steps after 1 warm-up, urpo and TRL interleaved step by step. Whole run {wall / 60:.1f} min."
        ),
        "",
        (
            "| configuration | precision | steps/s | TRL steps/s | speed vs TRL | completion tok/s | TRL tok/s | "
            "peak RSS GB | TRL peak RSS GB | memory vs TRL | urpo rollout s | urpo update s | mismatch |logp| | "
            "startup s (urpo / TRL) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, ours, theirs in results:
        engine, precision = config.split("-")
        lines.append(
            f"| {names[engine]} | {'fp32' if precision == '32' else 'bf16-mixed'} | {ours['steps_per_s']:.3f} | "
            f"{theirs['steps_per_s']:.3f} | {ours['steps_per_s'] / theirs['steps_per_s']:.2f}x | "
            f"{ours['tokens_per_s']:.0f} | {theirs['tokens_per_s']:.0f} | {ours['rss_gb']:.2f} | "
            f"{theirs['rss_gb']:.2f} | {ours['rss_gb'] / theirs['rss_gb']:.2f}x | {ours['rollout_s']:.2f} | "
            f"{ours['update_s']:.2f} | {ours['mismatch']:.2g} | {ours['startup_s']:.0f} / {theirs['startup_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
