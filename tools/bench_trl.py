"""urpo against TRL's GRPOTrainer: same model, prompts, G, completion length and CPU, steps interleaved.

    python tools/bench_trl.py --quick              # tiny model, < 3 minutes
    python tools/bench_trl.py                      # the issue's workload: ~100M Qwen2, 4 prompts x G=8 x 64 tokens
    python tools/bench_trl.py --configs hf-32,hfplain-32,urpo3hf-32,urpo3hfplain-32 --without-trl

Needs TRL 1.16 (``pip install 'urpo[baseline]'``; without it, ``--without-trl`` runs the urpo side alone) and, for
the vLLM rows, the ``vllm`` extra (docs/rollout.md). Every configuration runs in its own process, so its peak RSS
(``ru_maxrss``) is its own. Each urpo configuration is paired with a TRL process of the same precision (without TRL:
all urpo configurations of a precision form one group), and a group's processes take turns, one step each, while
the others wait: all see the same machine load, and none competes with another for the cores. The first step of
each is a warm-up and is not timed; step times are medians. urpo and TRL sample exactly ``--length`` tokens per
completion (``min_new_tokens`` in HF generate and TRL, ``min_tokens`` in vLLM), so both do the same work.

Configurations (``--configs``, ENGINE-PRECISION): ``hf`` and ``vllm`` train on verifiable rows, as TRL does;
``hfplain`` is ``hf`` as urpo computed it before issue 15: ``sampling.shared_prefill``, ``grpo.shared_prefix`` and
``grpo.logits_chunk_tokens`` off (each prompt prefilled and trained on G times, whole logits) and generation on
``transformers``' stock SDPA (the KV cache copied to every query head, :mod:`urpo.attention`); ``urpo3`` (vLLM),
``urpo3hf`` and ``urpo3hfplain`` (HF) run URPO's step of all three kinds: every 4-row
block is 2 verifiable rows, 1 preference row of N = 4 responses of ~150 tokens each (a long referee prompt, judged
G times and trained on) and 1 open row (its G answers judged by the policy). Each row of the table gives the phases
of a step (rollout, the referee's judging, update), peak RSS, and the step beside this CPU's limits, which the tool
measures first: its fp32 matrix-product rate (GFLOP/s) and memory bandwidth (GB/s). A benchmark, not a test: it
prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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


REFEREE_RESPONSES = 4  # N responses of a preference row
RESPONSE_TOKENS = 150  # about this many tokens each: the referee prompt carries all N


def bench_rows(count: int, three_kinds: bool = False, tokenizer=None) -> list:
    """Verifiable arithmetic rows; with ``three_kinds`` every 4-row block is 2 verifiable, 1 preference (N = 4
    responses of ~150 tokens of ``tokenizer``), 1 open."""
    from urpo.data.schema import OpenRow, PreferenceRow, VerifiableRow

    rows = []
    for i in range(count):
        a, b = i % 30, (7 * i) % 30
        if three_kinds and i % 4 == 2:
            answers = [a + b + k for k in range(REFEREE_RESPONSES)]
            rows.append(
                PreferenceRow(
                    source="bench",
                    index=i,
                    prompt=f"What is {a} + {b}? Explain each step.",
                    responses=tuple(long_response(a, b, answer, tokenizer) for answer in answers),
                    scores=tuple(float(-k) for k in range(REFEREE_RESPONSES)),  # the correct sum is best
                )
            )
        elif three_kinds and i % 4 == 3:
            rows.append(OpenRow(source="bench", index=i, prompt=f"Write one sentence about the number {a + b}."))
        else:
            rows.append(VerifiableRow(source="bench", index=i, prompt=f"What is {a} + {b}?", answer=str(a + b)))
    return rows


def long_response(a: int, b: int, answer: int, tokenizer) -> str:
    """A worked answer of about RESPONSE_TOKENS tokens of ``tokenizer`` (words counted when it is None)."""
    steps = [
        f"We add {a} and {b}.",
        f"Start from {a} and count up {b} more.",
        f"Tens first: {a // 10 * 10} plus {b // 10 * 10}; then the units, {a % 10} plus {b % 10}.",
        f"Put the two parts together and check the result against {a} plus {b} once more.",
    ]
    text, k = "", 0
    while (len(tokenizer(text)["input_ids"]) if tokenizer else len(text.split())) < RESPONSE_TOKENS:
        text += steps[k % len(steps)] + " "
        k += 1
    return text + f"So the answer is {answer}."


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
    from transformers import AutoTokenizer

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
    if not spec["shared_prefill"]:  # urpo before issue 15 also copied the KV cache to every head on CPU
        import contextlib

        import urpo.engines.hf_engine

        urpo.engines.hf_engine.cpu_grouped_query_attention = lambda model: contextlib.nullcontext()
    rewards = [answer_reward_callback()]
    if spec["three_kinds"]:
        from urpo.rewards.preference import PreferenceReward
        from urpo.rewards.self_judge import SelfJudge

        rewards += [PreferenceReward(), SelfJudge()]
    L.seed_everything(0)
    module = URPOModule(
        PolicyArgs(spec["model"]),
        rewards=rewards,
        grpo=GRPOArgs(  # the plain configurations switch off every prompt-sharing path of urpo's update
            num_generations=spec["g"],
            shared_prefix=spec["shared_prefill"],
            logits_chunk_tokens=GRPOArgs.logits_chunk_tokens if spec["shared_prefill"] else 0,
        ),
        sampling=SamplingArgs(max_new_tokens=spec["length"], shared_prefill=spec["shared_prefill"]),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0),
        rollout=RolloutArgs(
            engine=spec["engine"],
            vllm=VLLMArgs(
                kv_cache_memory_bytes=256 << 20, max_model_len=2048, sampling_kwargs={"min_tokens": spec["length"]}
            ),
        ),
        logging=LoggingArgs(samples_every_n_steps=0, export_dir=None),
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    rows = bench_rows(spec["prompts"] * spec["steps"], spec["three_kinds"], tokenizer)
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

CONFIGS = {  # ENGINE part of --configs: what the urpo worker runs
    "hf": {"engine": "hf", "three_kinds": False, "shared_prefill": True},
    "hfplain": {"engine": "hf", "three_kinds": False, "shared_prefill": False},
    "vllm": {"engine": "vllm", "three_kinds": False, "shared_prefill": True},
    "urpo3": {"engine": "vllm", "three_kinds": True, "shared_prefill": True},
    "urpo3hf": {"engine": "hf", "three_kinds": True, "shared_prefill": True},
    "urpo3hfplain": {"engine": "hf", "three_kinds": True, "shared_prefill": False},
}
"""``shared_prefill: False`` stands for urpo before issue 15: no shared prefill or prefix update, whole logits."""
NAMES = {
    "hf": "urpo + HF generate",
    "hfplain": "urpo + HF generate, each prompt computed G times (before)",
    "vllm": "urpo + vLLM",
    "urpo3": "urpo + vLLM, 3 kinds (URPO step)",
    "urpo3hf": "urpo + HF, 3 kinds (URPO step)",
    "urpo3hfplain": "urpo + HF, 3 kinds, each prompt computed G times (before)",
}
PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed"}


class Worker:
    def __init__(self, name: str, spec: dict, log: Path) -> None:
        self.name, self.spec, self.steps, self.final = name, spec, [], {}
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
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
        phase = {name: statistics.mean(s.get(f"time/{name}", 0.0) for s in timed) for name in PHASES}
        return {
            "steps_per_s": 1 / seconds,
            "tokens_per_s": tokens_per_step / seconds,
            "seconds": seconds,
            "rss_gb": self.final["max_rss_mb"] / 1024,
            "tokens_per_step": tokens_per_step,
            "startup_s": self.ready,
            "mismatch": statistics.mean(s.get("mismatch/logp_abs_diff", float("nan")) for s in timed),
            **{f"{name}_s": value for name, value in phase.items()},
        }


PHASES = ("rollout", "judge", "update")  # urpo.timing's phases shown in the table (judge is part of reward)


def run_group(specs: dict[str, dict], logs: Path) -> dict[str, dict]:
    """Start one process per spec, then step them in turns (one step each, the others waiting); their summaries."""
    workers = {name: Worker(name, spec, logs / f"{name}.log") for name, spec in specs.items()}
    for worker in workers.values():
        worker.ready = worker.expect("ready")["seconds"]
    steps = next(iter(specs.values()))["steps"]
    for step in range(steps):
        for worker in workers.values():
            worker.step()
        times = ", ".join(f"{name} {w.steps[-1]['seconds']:.2f} s" for name, w in workers.items())
        print(f"    step {step}: {times}", flush=True)
    for worker in workers.values():
        worker.finish()
    return {name: w.summary(w.spec["length"], w.spec["prompts"] * w.spec["g"]) for name, w in workers.items()}


# ---- this CPU's limits ----------------------------------------------------------------------------------------------


def measure_limits(seconds: float = 3.0) -> dict:
    """This CPU's fp32 matrix-product rate (GFLOP/s, torch.mm of 2048 x 2048, the best of repeated runs) and memory
    bandwidth (GB/s: bytes read plus written by copying a 512 MiB tensor, the best run), with torch's threads."""
    import torch

    def best(run, budget: float) -> float:
        run()  # warm-up
        fastest, spent = float("inf"), 0.0
        while spent < budget:
            t0 = time.perf_counter()
            run()
            took = time.perf_counter() - t0
            fastest, spent = min(fastest, took), spent + took
        return fastest

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = 2 * n**3 / best(lambda: torch.mm(a, b), seconds) / 1e9
    src = torch.ones(128 << 20)  # 512 MiB of fp32
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src), seconds) / 1e9
    limits = {"matmul_gflops": matmul, "bandwidth_gbs": bandwidth}
    sys.path.insert(0, str(ROOT))
    from tools.machine import cpu_flags

    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:  # bf16 has hardware support: its rate matters too
        a16, b16 = a.bfloat16(), b.bfloat16()
        limits["matmul_bf16_gflops"] = 2 * n**3 / best(lambda: torch.mm(a16, b16), seconds) / 1e9
    return limits


def machine(limits: dict) -> str:
    import torch

    sys.path.insert(0, str(ROOT))
    from tools.machine import cpu_name, simd

    bf16 = f", bf16 {limits['matmul_bf16_gflops']:.0f} GFLOP/s" if "matmul_bf16_gflops" in limits else ""
    return (
        f"{cpu_name()} ({simd()}), {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); measured: fp32 matmul {limits['matmul_gflops']:.0f} GFLOP/s{bf16}, memory bandwidth "
        f"{limits['bandwidth_gbs']:.1f} GB/s"
    )


def floors(model: Path, params: int, base: dict, limits: dict) -> dict:
    """The least time this CPU needs for the verifiable workload's phases: decoding reads every weight once per
    token step (bandwidth-bound), and the update's forward and backward take 6 x (non-embedding parameters) FLOPs
    per distinct token, each prompt once and every completion token (matmul-bound; attention and logits left out)."""
    from transformers import AutoConfig, AutoTokenizer

    from urpo.prompts import PlayerTemplate, render_chat

    config = AutoConfig.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [render_chat(tokenizer, PlayerTemplate().messages(r)) for r in bench_rows(base["prompts"])]
    prompt_tokens = statistics.mean(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    sequences = base["prompts"] * base["g"]
    matrix_params = params - config.vocab_size * config.hidden_size  # tied embeddings: counted once
    # Each prompt once, as the shared-prefix update runs it; every completion token in full.
    update_flops = 6 * matrix_params * (base["prompts"] * prompt_tokens + sequences * base["length"])
    return {
        "prompt_tokens": prompt_tokens,
        "rollout_s": base["length"] * params * 4 / (limits["bandwidth_gbs"] * 1e9),
        "update_s": update_flops / (limits["matmul_gflops"] * 1e9),
        "update_tflop": update_flops / 1e12,
    }


# ---- the run --------------------------------------------------------------------------------------------------------


def in_own_process(task: dict):
    """Run :func:`measure_limits` or :func:`build_model` in a child process and return its result."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(task)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith(TAG))[len(TAG) :])


def run_task(task: dict) -> None:
    result = measure_limits() if task["task"] == "limits" else build_model(Path(task["folder"]), task["size"])
    print(TAG + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    if str(ROOT / "src") not in sys.path:  # the coordinator reads urpo's templates too; a checkout needs no install
        sys.path.insert(0, str(ROOT / "src"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short completions: under 3 minutes")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default 100m; tiny with --quick")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--g", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--length", type=int, default=None, help="tokens per completion (default 64; 16 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration, 1st untimed (default 4)")
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated urpo configurations ENGINE-PRECISION, ENGINE in {', '.join(CONFIGS)} (module "
        "docstring), PRECISION in 32, bf16 (default: hf-32,vllm-32,urpo3-32,urpo3hf-32,hf-bf16,vllm-bf16; "
        "hf-32,vllm-32 with --quick)",
    )
    parser.add_argument("--without-trl", action="store_true", help="run the urpo side only (TRL not installed)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if "task" in spec:
            return run_task(spec)
        return run_trl(spec) if spec["engine"] == "trl" else run_urpo(spec)

    from importlib.util import find_spec

    if not args.without_trl and find_spec("trl") is None:
        parser.error("TRL is not installed: pip install 'urpo[baseline]', or pass --without-trl for urpo alone")
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
    # Both in processes of their own: Linux keeps a process's peak RSS across fork and exec, so a coordinator that
    # had held the model or the bandwidth test's buffers would pass that peak on to every worker's ru_maxrss.
    limits = in_own_process({"task": "limits"})
    where = machine(limits)
    print(f"  {where}", flush=True)
    params = in_own_process({"task": "build", "folder": str(work / "model"), "size": size})
    base = {
        "model": str(work / "model"),
        "prompts": args.prompts,
        "g": args.g,
        "length": length,
        "steps": steps,
        "workdir": str(work),
    }
    configs = args.configs or ("hf-32,vllm-32" if args.quick else "hf-32,vllm-32,urpo3-32,urpo3hf-32,hf-bf16,vllm-bf16")
    specs = {}
    for config in configs.split(","):
        engine, precision = config.split("-")
        specs[config] = dict(base, **CONFIGS[engine], precision=PRECISIONS[precision])
    groups: list[dict[str, dict]] = []
    if args.without_trl:  # one group per precision: its urpo configurations take turns
        for precision in PRECISIONS.values():
            group = {name: spec for name, spec in specs.items() if spec["precision"] == precision}
            groups += [group] if group else []
    else:  # each urpo configuration beside a TRL process of its precision
        for name, spec in specs.items():
            trl = dict(base, engine="trl", precision=spec["precision"], three_kinds=False, shared_prefill=True)
            groups.append({name: spec, f"trl-{name}": trl})
    results = {}
    for group in groups:
        print(f"  {', '.join(group)} ...", flush=True)
        summaries = run_group(group, work)
        results.update(summaries)
        for name, summary in summaries.items():  # partial results, should a later group fail
            print(f"  {name}: {json.dumps(summary)}", flush=True)
    table = format_table(results, specs, size, params, base, where, time.perf_counter() - t0)
    table += "\n\n" + format_floors(results, floors(work / "model", params, base, limits), base)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


def format_table(results, specs, size, params, base, where, wall) -> str:
    lines = [
        (
            f"Machine: {where}. Model: Qwen2 '{size}', {params / 1e6:.1f}M parameters. Work per step: "
            f"{base['prompts']} prompts x G={base['g']} x {base['length']} tokens; median of {base['steps'] - 1} "
            f"timed steps after 1 warm-up, processes of a group interleaved step by step. Whole run "
            f"{wall / 60:.1f} min."
        ),
        "",
        (
            "| configuration | precision | steps/s | TRL steps/s | speed vs TRL | completion tok/s | peak RSS GB | "
            "TRL peak RSS GB | memory vs TRL | rollout s | judge s | update s | step s | mismatch |logp| | "
            "startup s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in specs:
        ours, theirs = results[config], results.get(f"trl-{config}")
        engine, precision = config.split("-")
        vs = (
            (f"{theirs['steps_per_s']:.3f}", f"{ours['steps_per_s'] / theirs['steps_per_s']:.2f}x")
            if theirs
            else ("n/a", "n/a")
        )
        memory = (f"{theirs['rss_gb']:.2f}", f"{ours['rss_gb'] / theirs['rss_gb']:.2f}x") if theirs else ("n/a", "n/a")
        lines.append(
            f"| {NAMES[engine]} | {'fp32' if precision == '32' else 'bf16-mixed'} | {ours['steps_per_s']:.3f} | "
            f"{vs[0]} | {vs[1]} | {ours['tokens_per_s']:.0f} | {ours['rss_gb']:.2f} | {memory[0]} | {memory[1]} | "
            f"{ours['rollout_s']:.2f} | {ours['judge_s']:.2f} | {ours['update_s']:.2f} | {ours['seconds']:.2f} | "
            f"{ours['mismatch']:.2g} | {ours['startup_s']:.0f} |"
        )
    return "\n".join(lines)


def format_floors(results: dict, floor: dict, base: dict) -> str:
    """The verifiable configurations' phases beside this CPU's limits (:func:`floors`)."""
    lines = [
        (
            f"This CPU's limits for the verifiable workload ({base['prompts']} x {base['g']} sequences of "
            f"{floor['prompt_tokens']:.0f} prompt + {base['length']} completion tokens): rollout >= "
            f"{floor['rollout_s']:.2f} s (every fp32 weight read once per token step), update >= "
            f"{floor['update_s']:.2f} s ({floor['update_tflop']:.2f} TFLOP of forward and backward at the measured "
            "matmul rate)."
        ),
        "",
        "| configuration | rollout s | x its floor | update s | x its floor |",
        "|---|---|---|---|---|",
    ]
    for config, ours in results.items():
        if config.startswith(("hf-", "hfplain-", "vllm-")):
            lines.append(
                f"| {config} | {ours['rollout_s']:.2f} | {ours['rollout_s'] / floor['rollout_s']:.1f}x | "
                f"{ours['update_s']:.2f} | {ours['update_s'] / floor['update_s']:.1f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
