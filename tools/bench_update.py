"""Time and memory of the update phase alone, on a random ~10M-parameter Qwen2 with a 32k vocabulary.

    python tools/bench_update.py                        # every configuration, each in a fresh process
    python tools/bench_update.py --one shared-chunked   # one configuration in this process

Workloads (random tokens, fixed seeds): ``player`` is 4 prompts of ~85 tokens x G = 8 completions of 40-64 tokens;
``referee`` is 2 judging prompts of ~600 tokens x G = 8 verdicts of 16-32 tokens. Each configuration runs
``Updater.run`` (beta = 0, one AdamW step, one micro-batch budget of 8192 tokens) once to warm up, then ``--repeats``
times; it prints the median seconds and the peak RSS growth over the process's resident size before the first update
(the update's transient memory: activations, logits, gradients, optimizer states). A benchmark, not a test.

Configurations: ``plain-whole`` (every prompt per completion, whole logits: the update before the shared-prefix and
chunked-logits work), ``plain-chunked``, ``shared-whole``, ``shared-chunked`` (the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "plain-whole": {"shared_prefix": False, "logits_chunk_tokens": None},
    "plain-chunked": {"shared_prefix": False, "logits_chunk_tokens": 1024},
    "shared-whole": {"shared_prefix": True, "logits_chunk_tokens": None},
    "shared-chunked": {"shared_prefix": True, "logits_chunk_tokens": 1024},
}
WORKLOADS = {"player": (4, 85, (40, 64)), "referee": (2, 600, (16, 32))}
"""Prompts, prompt length (+- 10%), completion length range; G = 8 completions per prompt."""


def build_model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32_000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).train()


def sequences(workload: str, seed: int = 0):
    import torch

    from urpo.episode import TrainSequence

    prompts, prompt_len, (low, high) = WORKLOADS[workload]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for episode in range(prompts):
        length = prompt_len + int(torch.randint(-prompt_len // 10, prompt_len // 10 + 1, (1,), generator=generator))
        prompt = torch.randint(3, 32_000, (length,), generator=generator).tolist()
        for sample in range(8):
            size = int(torch.randint(low, high + 1, (1,), generator=generator))
            completion = torch.randint(3, 32_000, (size,), generator=generator).tolist()
            advantage = float(torch.randn((), generator=generator))
            out.append(TrainSequence(prompt, completion, advantage, episode, sample))
    return out


def run_one(config: str, workload: str, repeats: int) -> dict[str, float]:
    import torch

    from urpo.args import GRPOArgs, RolloutCorrectionArgs, SamplingArgs
    from urpo.update import Ranks, Updater

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> float:
        optimizer.step()
        optimizer.zero_grad()
        return 0.0

    fields = set(GRPOArgs.__dataclass_fields__)
    settings = {k: v for k, v in CONFIGS[config].items() if k in fields}
    if len(settings) != len(CONFIGS[config]) and config != "plain-whole":
        raise SystemExit(f"this urpo has no {sorted(set(CONFIGS[config]) - fields)}: only plain-whole runs")
    updater = Updater(
        model,
        GRPOArgs(num_generations=8, max_grad_norm=None, **settings),
        RolloutCorrectionArgs(),
        SamplingArgs(max_new_tokens=64),
        pad_id=0,
        ranks=Ranks(torch.device("cpu")),
        backward=lambda loss: loss.backward(),
        optimizer_step=step,
    )
    batch = sequences(workload)
    rss_before = _rss_bytes()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        updater.run(batch)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in batch)
    return {"seconds": statistics.median(times[1:]), "peak_growth_gb": (peak - rss_before) / 1e9, "tokens": tokens}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stats:
        return int(stats.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=list(CONFIGS), help="run one configuration here and print JSON")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="player")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.workload, args.repeats)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} updates")
    print("| workload | configuration | update s | peak RSS growth GB |")
    print("|---|---|---|---|")
    for workload in WORKLOADS:
        for config in args.configs.split(","):
            command = [sys.executable, __file__, "--one", config, "--workload", workload]
            command += ["--repeats", str(args.repeats)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                print(f"| {workload} | {config} | failed: {result.stderr.strip().splitlines()[-1:]} | |")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {workload} | {config} | {row['seconds']:.2f} | {row['peak_growth_gb']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
