"""Tiny offline models for tests, benchmarks and checks: a ChatML byte-level BPE tokenizer and a random Qwen2.

Nothing is downloaded: the tokenizer is trained on the fly on a small corpus, the model is randomly initialised.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: arithmetic, ranking markup and chat markers."""
    corpus = [f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}." for a in range(30) for b in range(30)]
    corpus += ["<ranking>A > B > C</ranking> [Response A] [End of Response A] Response B C D E F G H"] * 20
    corpus += ["Solve the problem step by step, then give the final answer in \\boxed{}."] * 20
    return corpus


def chatml_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``corpus`` up to ``vocab_size`` tokens, with ChatML's markers:
    ``<|im_end|>`` ends a turn (EOS), ``<|endoftext|>`` pads on the left."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_model(
    folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, corpus: list[str] | None = None
) -> Path:
    """Train a byte-level BPE tokenizer (on ``corpus``, default :func:`tiny_corpus`) and save it with a random tiny
    Qwen2 causal LM into ``folder``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = chatml_tokenizer(corpus or tiny_corpus(), vocab_size=512)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
