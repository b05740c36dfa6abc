"""Log-probs in chunks (urpo.logprobs): the same values and gradients as the whole-logits way, on tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.dist.common import fixed_sequences
from urpo.args import LoraArgs
from urpo.logprobs import chunked_scores, score_completions, whole_scores
from urpo.lora import apply_lora
from urpo.objective import masked_mean
from urpo.sequences import collate


def _model(model_dir: str, lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:  # gaussian B: the adapters change the output, so their gradients are not trivially zero
        model = apply_lora(model, LoraArgs(r=4, init_lora_weights="gaussian"))
    return model.train()


def _batch(model: torch.nn.Module, count: int = 5):
    sequences = fixed_sequences(3, vocab=model.config.vocab_size, count=count)  # ragged prompts and completions
    return collate(sequences, pad_id=0, device=torch.device("cpu"))


def _loss_and_grads(model, batch, temperature, chunk):
    """A loss that weights every token differently (so misplaced tokens show), its value and parameter grads."""
    model.zero_grad()
    scores = score_completions(model, batch, temperature, chunk)
    weights = torch.linspace(-1.0, 2.0, batch.completion_mask.numel()).reshape(batch.completion_mask.shape)
    loss = (scores.logprobs * weights * batch.completion_mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return scores, grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_chunks_give_the_values_and_gradients_of_whole_logits(tiny_model_dir, lora, chunk):
    model = _model(tiny_model_dir, lora)
    batch = _batch(model)
    mask = batch.completion_mask.bool()
    assert int(mask.sum()) > 7 and int(mask.sum()) % 7 != 0  # chunks that do not divide the tokens
    whole, whole_grads = _loss_and_grads(model, batch, 0.7, None)
    chunked, chunked_grads = _loss_and_grads(model, batch, 0.7, chunk)
    torch.testing.assert_close(chunked.logprobs[mask], whole.logprobs[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.entropy[mask], whole.entropy[mask], rtol=1e-5, atol=1e-5)
    assert not chunked.entropy.requires_grad
    assert whole_grads.keys() == chunked_grads.keys() and len(whole_grads) > 0
    if lora:
        assert all("lora_" in name for name in chunked_grads)
    for name, grad in whole_grads.items():  # float noise is relative to the gradient's size, not to each element
        scale = grad.abs().max().item()
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_no_grad_forward_matches_and_keeps_no_graph(tiny_model_dir):
    model = _model(tiny_model_dir, lora=False)
    batch = _batch(model)
    mask = batch.completion_mask.bool()
    with torch.no_grad():
        whole = whole_scores(model, batch, 1.3).logprobs
        chunked = score_completions(model, batch, 1.3, 4).logprobs
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked[mask], whole[mask], rtol=1e-5, atol=1e-5)
    assert masked_mean(chunked, mask) < 0


def test_chunks_hold_only_chunk_sized_logits():
    """The head only ever sees ``chunk`` rows at once, in forward and in the recomputation of backward."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    seen: list[int] = []
    head.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    hidden = torch.randn(3, 6, 8, requires_grad=True)
    ids = torch.randint(0, 50, (3, 6))
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0
    scores = chunked_scores(head, hidden, ids, mask, 1.0, chunk_tokens=4)
    scores.logprobs.sum().backward()
    assert max(seen) == 4 and sum(seen) == 2 * 16  # 16 real tokens, each through the head twice (forward, backward)
    assert torch.equal(hidden.grad[1, 4:], torch.zeros(2, 8))  # padding: skipped, no gradient


def test_a_head_that_is_not_linear_falls_back_with_a_warning():
    """Gemma 2 soft-caps its logits: the head alone would give other log-probs, so the whole-logits way is used."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5, pad_token_id=0,
    )  # fmt: skip
    model = Gemma2ForCausalLM(config).eval()
    batch = collate(fixed_sequences(0, vocab=64, count=3), pad_id=0, device=torch.device("cpu"))
    mask = batch.completion_mask.bool()
    with pytest.warns(UserWarning, match="whole logits for Gemma2ForCausalLM.*soft-capping"), torch.no_grad():
        chunked = score_completions(model, batch, 1.0, 2).logprobs
    with torch.no_grad():
        whole = whole_scores(model, batch, 1.0).logprobs
        again = score_completions(model, batch, 1.0, 2).logprobs  # settled once: no second warning
    torch.testing.assert_close(chunked[mask], whole[mask])
    torch.testing.assert_close(again[mask], whole[mask])
