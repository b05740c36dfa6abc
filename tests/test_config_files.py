"""Config keys of earlier versions fail before parsing, in one line naming their new place (urpo.config_files)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from urpo.cli import EXIT_BAD_INPUT, console_main
from urpo.config_files import RENAMED_KEYS, check_renamed_keys, renamed_key
from urpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())


def old_style(config: dict) -> dict:
    """``config`` written as before the groups were regrouped: model.model, model.lora, model.engine, ..."""
    old = copy.deepcopy(config)
    model = old["model"]
    model["model"] = model.pop("policy")
    for key in ("lora", "quantization", "gradient_checkpointing"):
        if key in model["model"]:
            model[key] = model["model"].pop(key)
    rollout = model.pop("rollout", {})
    model.update({k: v for k, v in {"engine": rollout.get("engine"), "vllm": rollout.get("vllm")}.items() if v})
    return old


def urpo_fails(capsys, *argv: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stop:
        console_main(list(argv))
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def test_an_old_config_file_fails_in_one_line_naming_the_new_key(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old_style(DEMO)))
    code, lines = urpo_fails(capsys, "fit", "--config", str(path), "--print_config")
    assert code == EXIT_BAD_INPUT
    assert len(lines) == 1
    assert lines[0].startswith(f"urpo: error: {path}: config key model.model was renamed to model.policy")


@pytest.mark.parametrize(
    ("option", "new"),
    [
        ("--model.model.name_or_path", "model.policy"),
        ("--model.lora.r", "model.policy.lora"),
        ("--model.gradient_checkpointing", "model.policy.gradient_checkpointing"),
        ("--model.engine", "model.rollout.engine"),
        ("--model.vllm.max_model_len", "model.rollout.vllm"),
        ("--model.rollout_correction.level", "model.rollout.correction"),
        ("--model.seed", "seed_everything"),
        ("--data.seed", "seed_everything"),
        ("--model.rollout.vllm.seed", "seed_everything"),
    ],
)
def test_an_old_option_fails_in_one_line_naming_the_new_key(option, new, capsys):
    code, lines = urpo_fails(capsys, "fit", "--config", str(ROOT / "configs" / "demo.yaml"), option, "1")
    assert code == EXIT_BAD_INPUT
    assert len(lines) == 1 and f"option {option}: config key" in lines[0] and new in lines[0]


def test_urpo_plan_names_the_new_key_too(tmp_path, capsys):
    from urpo.plan.report import main

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old_style(yaml.safe_load((ROOT / "configs" / "qwen7b.yaml").read_text()))))
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(path)])
    assert stop.value.code == 2
    assert "config key model.model was renamed to model.policy" in capsys.readouterr().err


def test_keys_of_the_current_groups_are_not_mistaken_for_old_ones():
    current = ["model.policy.lora.r", "model.rollout.engine", "model.rollout.vllm.dtype", "model.rollout.correction"]
    for key in [*current, "data.sources", "seed_everything", "model.rewards"]:
        assert renamed_key(key) is None, key
    assert renamed_key("fit.model.model.dtype") == f"config key model.model was {RENAMED_KEYS['model.model']}"
    for config in (ROOT / "configs").glob("*.yaml"):
        check_renamed_keys(yaml.safe_load(config.read_text()), str(config))  # shipped configs use the new keys
    with pytest.raises(ConfigError, match="model.vllm was moved to model.rollout.vllm"):
        check_renamed_keys({"model": {"vllm": {"dtype": "auto"}}}, "inline")
