"""FSDP2 and DDP: the preset from YAML, sharding, equality with one process, checkpoints, ragged generation.

Multi-process runs are standalone scripts in ``tests/dist/`` launched as subprocesses (Lightning's launcher re-runs
the whole command line for every rank, so they cannot run inside pytest); a deadlock shows as a subprocess timeout.
They train on FIXED hand-made completions (``tests/dist/common.py``), so a 2-rank run must end with the weights of a
1-rank run over the same global batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.dist.common import ROOT, run_module, run_script
from urpo.errors import ConfigError
from urpo.strategies import FSDP2Strategy, FSDPSettings, decoder_layers, shard_model

SAMPLES = ROOT / "src" / "urpo" / "data" / "samples" / "gsm8k_train.jsonl"


def reports(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(len(list(out.glob("rank*.json"))))]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = torch.load(a / "policy.pt"), torch.load(b / "policy.pt")
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        torch.testing.assert_close(right[name], tensor, rtol=0, atol=atol, msg=name)


def train(out: Path, model: str, strategy: str, *extra: str) -> list[dict]:
    devices = "1" if strategy == "single" else "2"
    run_script(
        "fixed_update.py",
        "--strategy",
        strategy,
        "--devices",
        devices,
        "--model",
        model,
        "--out",
        str(out),
        "--beta",
        "0.1",
        *extra,
    )
    return reports(out)


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory) -> Path:
    """4 steps on one process: the baseline every distributed run must reproduce."""
    out = tmp_path_factory.mktemp("single")
    train(out, tiny_model_dir, "single")
    return out


# ---- in-process checks -------------------------------------------------------------------------------------------


def test_decoder_layers_are_found_through_no_split_modules(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from urpo.args import LoraArgs
    from urpo.lora import apply_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert [type(m).__name__ for m in decoder_layers(model)] == ["Qwen2DecoderLayer"] * 2
    assert decoder_layers(model)[0] is model.model.layers[1]  # reverse module order: inner units are wrapped first
    assert len(decoder_layers(apply_lora(model, LoraArgs(r=2)))) == 2
    with pytest.raises(ConfigError, match="no decoder layers"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_quantized_models_are_refused():
    class Linear4bit(torch.nn.Linear):  # stands in for bitsandbytes' class, matched by name
        pass

    with pytest.raises(ConfigError, match="quantized"):
        shard_model(torch.nn.Sequential(Linear4bit(2, 2)), mesh=None, settings=FSDPSettings())


def test_settings_build_the_fsdp_policies():
    policy = FSDPSettings().mixed_precision()
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert FSDPSettings(param_dtype=None, reduce_dtype=None).mixed_precision().param_dtype is None
    assert type(FSDPSettings(cpu_offload=True).offload()).__name__ == "CPUOffloadPolicy"


def test_preset_is_pure_data_parallel_with_gloo_on_cpu():
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy(reshard_after_forward=False), logger=False)
    strategy = trainer.strategy
    assert strategy.fsdp.reshard_after_forward is False and strategy._tensor_parallel_size == 1
    assert strategy._get_process_group_backend() == "gloo"


def test_preset_is_usable_from_yaml(tiny_model_dir, capsys):
    from urpo.cli import main

    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "tests/dist/fsdp2_tiny.yaml"),
                "--model.policy.name_or_path",
                tiny_model_dir,
                "--print_config",
            ]
        )
    printed = capsys.readouterr().out
    assert "class_path: urpo.strategies.FSDP2Strategy" in printed
    assert "activation_checkpointing: true" in printed and "param_dtype: bfloat16" in printed


# ---- multi-process runs ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sharding_units_on_two_ranks(tiny_model_dir, tmp_path):
    """fully_shard on layers and root, activation checkpointing, gathering for generation, peft, the reference."""
    run_module(
        "torch.distributed.run",
        "--nproc_per_node=2",
        str(ROOT / "tests/dist/shard_units.py"),
        tiny_model_dir,
        str(tmp_path),
    )
    for report in reports(tmp_path):
        assert report["layers"] == ["Qwen2DecoderLayer"] * 2 and report["peft_layers"] == 2
        assert report["checkpointing_on"] and report["checkpointing_grad_diff"] < 1e-6
        assert report["gathered_inside"] and report["still_gathered_after_forward"] and report["sharded_after"]
        assert report["reshard_flags_restored"] and report["reshard_flags"] == [False, True, True]
        assert report["peft_generate_shape"] == [1, 9]
        assert report["reference_dtype"] == "torch.bfloat16" and report["policy_dtype"] == "torch.float32"
        assert report["engine_wrapped"] == "UnshardedGenerationEngine"


@pytest.mark.slow
def test_fsdp2_shards_and_matches_one_process(tiny_model_dir, single_run, tmp_path):
    runs = train(tmp_path, tiny_model_dir, "fsdp2")
    assert_same_weights(single_run, tmp_path)
    for rank, report in enumerate(runs):
        assert report["policy_sharded"] and report["reference_sharded"]
        local, full = report["shards"]["model.embed_tokens.weight"]
        assert local[0] * 2 == full[0] and local[1:] == full[1:]  # really a half on each rank
        # Ranks generated with different max_new_tokens (2 and 12) without hanging, gathered or sharded alike.
        assert max(report["generated_lengths"]) == 2 + 10 * rank
        assert report["unsharded_generation_matches"]


@pytest.mark.slow
def test_fsdp2_distributed_checkpoint_resumes_exactly(tiny_model_dir, single_run, tmp_path):
    """2 steps, save a DCP folder, resume for 2 more: the weights of 4 straight steps (optimizer state included)."""
    train(tmp_path / "first", tiny_model_dir, "fsdp2", "--steps", "2", "--save-checkpoint")
    checkpoint = tmp_path / "first" / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"}
    resumed = train(tmp_path / "resumed", tiny_model_dir, "fsdp2", "--steps", "4", "--resume", str(checkpoint))
    assert resumed[0]["steps"][0][0] == 2  # the first step after the resume is step 2
    assert_same_weights(single_run, tmp_path / "resumed")


@pytest.mark.slow
def test_ddp_matches_one_process_and_ranks_see_disjoint_rows(tiny_model_dir, single_run, tmp_path):
    runs = train(tmp_path, tiny_model_dir, "ddp")
    assert_same_weights(single_run, tmp_path)
    seen = [{tuple(row) for row in report["seen"]} for report in runs]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert all(index % 2 == rank for rank, rows in enumerate(seen) for _, index in rows)  # record i -> rank i % 2


@pytest.mark.slow
def test_fsdp2_lora_reference_is_the_base_and_export_merges(tiny_model_dir, tmp_path):
    """LoRA under FSDP2 with bf16 compute and activation checkpointing: no reference copy, adapters off = base."""
    from transformers import AutoModelForCausalLM

    runs = train(
        tmp_path,
        tiny_model_dir,
        "fsdp2",
        "--steps",
        "2",
        "--lora",
        "--param-dtype",
        "bfloat16",
        "--activation-checkpointing",
        "--export",
    )
    for report in runs:
        assert report["policy_sharded"] and report["reference_dtype"] is None
        assert report["reference_vs_base"] < 5e-3  # bf16 matmuls against the float32 base
        assert report["policy_vs_base"] > 5e-2  # the adapters were switched back on
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert exported.keys() == base.keys()
    assert not torch.equal(
        exported["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    torch.testing.assert_close(exported["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


@pytest.mark.slow
def test_cli_fsdp2_run_writes_dcp_checkpoints_and_a_loadable_model(tiny_model_dir, tmp_path):
    """`urpo fit` with ``trainer.strategy: urpo.strategies.FSDP2Strategy`` on 2 CPU ranks, end to end."""
    from transformers import AutoModelForCausalLM

    run_module(
        "urpo.cli",
        "fit",
        "--config",
        str(ROOT / "tests/dist/fsdp2_tiny.yaml"),
        "--model.policy.name_or_path",
        tiny_model_dir,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.sources",
        json.dumps([{"adapter": "gsm8k", "path": str(SAMPLES)}]),
    )
    run = tmp_path / "fsdp2" / "version_0"
    checkpoint = run / "checkpoints" / "epoch=0-step=2.ckpt"
    assert checkpoint.is_dir() and (checkpoint / ".metadata").is_file()
    assert (run / "checkpoints" / "last.ckpt" / ".metadata").is_file()
    assert "train/kl" in (run / "metrics.csv").read_text().splitlines()[0]
    AutoModelForCausalLM.from_pretrained(run / "hf_model")


@pytest.mark.gpu
def test_fsdp2_on_cuda_in_bf16(tiny_model_dir, tmp_path):
    devices = str(min(torch.cuda.device_count(), 2))
    run_script(
        "fixed_update.py",
        "--strategy",
        "fsdp2",
        "--accelerator",
        "cuda",
        "--devices",
        devices,
        "--model",
        tiny_model_dir,
        "--out",
        str(tmp_path),
        "--param-dtype",
        "bfloat16",
        "--beta",
        "0.1",
        "--lora",
        "--activation-checkpointing",
        "--steps",
        "2",
    )
    for report in reports(tmp_path):
        assert report["policy_sharded"] and report["reference_vs_base"] < 5e-3


@pytest.fixture
def process_group(tmp_path):
    """A one-rank gloo group in this process, as a run's ranks leave it after ``fit``; closed again afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


def test_release_process_group_closes_the_group_a_run_leaves_up_and_is_a_no_op_without_one(process_group):
    from urpo.strategies import release_process_group

    release_process_group()
    assert not process_group.is_initialized()
    release_process_group()
    assert not process_group.is_initialized()


def test_urpo_closes_the_process_group_even_when_its_command_fails(process_group):
    """The release sits in a ``finally``: a rank whose command errors out must not abort at exit either."""
    from urpo.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--no_such_option", "1"])
    assert not process_group.is_initialized()
