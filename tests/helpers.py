"""Builders shared by tests and tools: tiny offline models and small row sets."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: arithmetic, ranking markup and chat markers."""
    corpus = [f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}." for a in range(30) for b in range(30)]
    corpus += ["<ranking>A > B > C</ranking> [Response A] [End of Response A] Response B C D E F G H"] * 20
    corpus += ["Solve the problem step by step, then give the final answer in \\boxed{}."] * 20
    return corpus


def build_tiny_model(
    folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, corpus: list[str] | None = None
) -> Path:
    """Train a byte-level BPE tokenizer (on ``corpus``, default :func:`tiny_corpus`) and save it with a random tiny
    Qwen2 causal LM into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or tiny_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
