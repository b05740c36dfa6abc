"""``urpo plan``: parameter counts, how each setting moves the terms, the verdict and advice, bad input, and one
calibration run against a measured peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from urpo.args import ModelArgs
from urpo.errors import ConfigError
from urpo.plan.architecture import model_facts
from urpo.plan.estimate import memory_plan
from urpo.plan.report import main, parse_bytes
from urpo.plan.setup import read_config, run_setup
from urpo.plan.shapes import shapes
from urpo.plan.step_time import step_time

ROOT = Path(__file__).resolve().parents[2]
QWEN7B, QWEN1_5B = str(ROOT / "configs/qwen7b.yaml"), str(ROOT / "configs/qwen1_5b_1gpu.yaml")


def tiny_config(model_dir: str, policy: dict | None = None, **model_changes) -> dict:
    return {
        "trainer": {"accelerator": "cpu", "devices": 1},
        "model": {
            "policy": {"name_or_path": model_dir, **(policy or {})},
            "grpo": {"num_generations": 4},
            **model_changes,
        },
        "data": {"sources": [{"adapter": "gsm8k", "path": "x.jsonl"}], "batch_size": 4, "max_prompt_tokens": 64},
    }


def write(tmp_path: Path, config: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def plan_of(config: dict, cuda: bool = False):
    setup = run_setup(config)
    return setup, memory_plan(setup, model_facts(setup.model), cuda=cuda)


# ---- architecture -----------------------------------------------------------------------------------------------


def test_bundled_qwen_architectures_give_the_published_parameter_counts():
    # Qwen2.5-7B-Instruct has 7,615,616,512 parameters (its model card: 7.61 B), 1.5B 1,543,714,304 (1.54 B).
    assert model_facts(ModelArgs("Qwen/Qwen2.5-7B-Instruct")).params == 7_615_616_512
    small = model_facts(ModelArgs("Qwen/Qwen2.5-1.5B-Instruct"))
    assert small.params == 1_543_714_304
    assert small.head_params == 0  # tied embeddings
    # LoRA r=32 on the seven projections of 28 layers: 28 x 32 x (in + out) summed over the projections.
    per_layer = sum(
        32 * (i + o)
        for i, o in [(1536, 1536), (1536, 256), (1536, 256), (1536, 1536), (1536, 8960), (1536, 8960), (8960, 1536)]
    )
    assert (
        small.lora_params(32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        == 28 * per_layer
    )


def test_tiny_model_facts_match_the_built_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    facts = model_facts(ModelArgs(tiny_model_dir))
    assert facts.params == sum(p.numel() for p in real.parameters())
    assert (facts.hidden, facts.num_layers, facts.vocab) == (64, 2, real.config.vocab_size)


# ---- how settings move the terms -----------------------------------------------------------------------------------


def test_fsdp2_shards_weights_gradients_and_states_over_the_world_size(tiny_model_dir):
    def states(devices: int) -> list[float]:
        config = tiny_config(tiny_model_dir, grpo={"num_generations": 4, "beta": 0.1})
        config["trainer"] = {
            "accelerator": "gpu",
            "devices": devices,
            "strategy": {"class_path": "urpo.strategies.FSDP2Strategy"},
        }
        _, plan = plan_of(config, cuda=True)
        return [plan.term(n).bytes for n in ("weights", "gradients", "optimizer states", "reference policy")]

    one, eight = states(1), states(8)
    assert all(a == pytest.approx(8 * b) for a, b in zip(one, eight))


def test_lora_trains_adapters_only_and_its_reference_is_free(tiny_model_dir):
    full_setup, full = plan_of(tiny_config(tiny_model_dir, grpo={"num_generations": 4, "beta": 0.1}))
    _, lora = plan_of(tiny_config(tiny_model_dir, grpo={"num_generations": 4, "beta": 0.1}, policy={"lora": {"r": 4}}))
    assert full.term("reference policy").bytes == full.term("weights").bytes  # a frozen fp32 copy
    assert lora.term("reference policy").bytes == 0
    assert lora.term("gradients").bytes < full.term("gradients").bytes / 5
    facts = model_facts(full_setup.model)
    assert lora.term("gradients").bytes == 4 * facts.lora_params(
        4, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_eight_bit_optimizer_quarters_the_states(tiny_model_dir):
    _, adamw = plan_of(tiny_config(tiny_model_dir))
    _, eight = plan_of(tiny_config(tiny_model_dir, optimizer={"class_path": "bitsandbytes.optim.AdamW8bit"}))
    assert eight.term("optimizer states").bytes == pytest.approx(adamw.term("optimizer states").bytes / 4)


def test_micro_batch_budget_and_checkpointing_bound_the_update(tiny_model_dir):
    def update(chunk=None, **grpo_and_more) -> float:
        budget = grpo_and_more.pop("budget")
        grpo = {"num_generations": 4, "max_tokens_per_micro_batch": budget, "logits_chunk_tokens": chunk}
        plan = plan_of(tiny_config(tiny_model_dir, grpo=grpo, **grpo_and_more))[1]
        return plan.phase_total("update") - plan.term("CPU kernel workspaces").bytes  # a constant of every phase

    assert update(budget=4096) > 3 * update(budget=1024)
    assert update(budget=4096, policy={"gradient_checkpointing": True}) < update(budget=4096)
    # Logits in chunks: a chunk's logits, not the micro-batch's, whatever the budget.
    assert update(budget=4096, chunk=64) < update(budget=4096)
    setup, chunked = plan_of(tiny_config(tiny_model_dir, grpo={"num_generations": 4, "logits_chunk_tokens": 64}))
    assert chunked.term("logits, one micro-batch").bytes == 5 * 64 * model_facts(setup.model).vocab * 4


def test_vllm_engine_holds_its_weights_and_kv_cache_instead_of_hf_generation(tiny_model_dir):
    vllm = {"kv_cache_memory_bytes": 1 << 28, "dtype": "bfloat16"}
    config = tiny_config(tiny_model_dir, rollout={"engine": "vllm", "vllm": vllm})
    setup, plan = plan_of(config)
    facts = model_facts(setup.model)
    assert plan.term("vLLM engine weights").bytes == 2 * facts.params
    assert plan.term("vLLM KV cache").bytes == 1 << 28
    assert plan.term("generation: player") is None


def test_shared_prefill_computes_each_prompt_once_in_the_generation_estimate(tiny_model_dir):
    """tiny_config: 4 prompts of 64 tokens x G = 4. Shared, a prompt's cache (all but its last token) is computed
    once per engine call it appears in, and every sequence runs the last prompt token itself."""

    def generation(**model_changes) -> int:
        setup = run_setup(tiny_config(tiny_model_dir, **model_changes))
        return step_time(setup, model_facts(setup.model), tflops=1.0).generate_flops

    params = model_facts(run_setup(tiny_config(tiny_model_dir)).model).params
    plain = generation(sampling={"shared_prefill": False})
    saved_per_prefill = 2 * params * (64 - 1)  # one prompt's cache not computed again
    assert plain - generation() == (16 - 4) * saved_per_prefill
    # calls of 6 sequences: [0, 6) holds prompts 0-1, [6, 12) prompts 1-2, [12, 16) prompt 3: 5 prefills
    assert plain - generation(sampling={"max_batch_size": 6}) == (16 - 5) * saved_per_prefill
    # vLLM's prefix cache: each prompt once for the whole step; without it, once per sequence
    vllm = {"kv_cache_memory_bytes": 1 << 28}
    assert generation(rollout={"engine": "vllm", "vllm": vllm}) == generation()
    no_cache = {**vllm, "enable_prefix_caching": False}
    assert generation(rollout={"engine": "vllm", "vllm": no_cache}) == plain


def test_self_judge_prompts_are_halved_like_the_self_judge_does(tiny_model_dir):
    config = tiny_config(
        tiny_model_dir,
        grpo={"num_generations": 8},
        sampling={"max_new_tokens": 100},
        rewards=[{"class_path": "urpo.rewards.SelfJudge", "init_args": {"max_prompt_tokens": 500}}],
    )
    s = shapes(run_setup(config))
    # 64 + 8 x 100 > 500, 64 + 4 x 100 = 464 fits: 2 chunks of 4 answers, 2 judgments, 4 rows.
    assert (s.judge_prompt, s.judge_prompts) == (464, 4 * 2 * 2)


# ---- the report ----------------------------------------------------------------------------------------------------


def test_plan_prints_the_table_and_a_verdict(tiny_model_dir, tmp_path, capsys):
    assert main(["--config", write(tmp_path, tiny_config(tiny_model_dir)), "--device_memory", "16GB"]) == 0
    out = capsys.readouterr().out
    for line in (
        "| weights |",
        "| gradients |",
        "| optimizer states |",
        "| activations, one micro-batch |",
        "| logits, one micro-batch |",
        "| generation: player |",
        "verdict: FITS",
        "time:",
    ):
        assert line in out


@pytest.mark.parametrize("config, memory", [(QWEN7B, "80GB"), (QWEN1_5B, "24GB")])
def test_shipped_configs_fit_their_stated_hardware_offline(config, memory, capsys):
    assert main(["--config", config, "--device_memory", memory]) == 0
    assert "verdict: FITS" in capsys.readouterr().out


def test_a_config_that_does_not_fit_gets_settings_that_do(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", QWEN7B, "--device_memory", "48GB"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out
    suggestions = [line.strip()[2:].split("  ->")[0] for line in out.splitlines() if line.strip().startswith("- ")]
    assert suggestions
    for suggestion in suggestions:  # each suggested change, applied as an override, must fit
        overrides = []
        for setting in suggestion.split(" + "):
            key, value = setting.split(" (")[0].split(": ", 1)
            if key.startswith("SelfJudge"):
                continue
            overrides += [f"--{key}", value]
        if len(overrides) == len(suggestion.split(" + ")) * 2:
            assert main(["--config", QWEN7B, "--device_memory", "48GB", *overrides]) == 0


def test_a_config_that_cannot_fit_at_any_setting_says_so(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", QWEN1_5B, "--device_memory", "1GB"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "cannot fit" in out and "Traceback" not in out


def test_memory_sizes_parse():
    assert parse_bytes("80GB") == 80e9
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("512 MB") == 512e6
    assert parse_bytes("80") == 80e9


# ---- bad input -----------------------------------------------------------------------------------------------------


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_architecture_is_named(tmp_path, capsys):
    folder = tmp_path / "strange"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_arch", "hidden_size": 8}))
    err = _error(capsys, ["--config", write(tmp_path, tiny_config(str(folder)))])
    assert "no_such_arch" in err and str(folder) in err


def test_missing_config_json_is_named(tmp_path, capsys):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    err = _error(capsys, ["--config", write(tmp_path, tiny_config(str(folder)))])
    assert "config.json" in err and "empty_model" in err


def test_uncached_unknown_hub_id_says_what_to_fetch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    err = _error(capsys, ["--config", write(tmp_path, tiny_config("someone/not-a-cached-model"))])
    assert "someone/not-a-cached-model" in err and "huggingface-cli download" in err


def test_missing_config_file_and_bad_override(tmp_path, capsys, tiny_model_dir):
    assert "does not exist" in _error(capsys, ["--config", str(tmp_path / "nope.yaml")])
    path = write(tmp_path, tiny_config(tiny_model_dir))
    assert "num_generations" in _error(capsys, ["--config", path, "--model.grpo.num_generations", "1"])
    with pytest.raises(ConfigError, match="no value"):
        read_config(path, ["--model.grpo.beta"])


# ---- calibration -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plan_peak_is_within_25_percent_of_a_measured_run(tmp_path):
    """A real `urpo fit` of the tiny model on CPU, micro-batched, peaks within 25% of the plan.

    The same measurement as tools/plan_calibration.py, on one case.
    """
    from tools.plan_calibration import run_case

    row = run_case("tiny_test", tmp_path / "models", tmp_path / "runs")
    assert row["planned_phase"] == "update"
    assert 0.75 <= row["ratio"] <= 1.25, row


def test_docs_quote_what_urpo_plan_prints_now(monkeypatch):
    """docs/scaling.md's memory plans are generated (tools/plan_docs.py), never hand-written numbers."""
    import sys

    monkeypatch.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from tools.plan_docs import DOC, regenerate

    text = DOC.read_text()
    assert text.count("<!-- generated: urpo plan") == 2
    assert regenerate(text) == text, "run python tools/plan_docs.py"
