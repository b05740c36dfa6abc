"""The default rollout engine: ``transformers``' ``generate`` on the module's own (possibly sharded) policy.

:class:`HFGenerateEngine` samples from the live policy, so it never holds a stale copy of the weights and works under
FSDP2; :func:`generate_ids` is its one ``model.generate`` call, which :func:`complete` (greedy or sampled texts for
``urpo eval-referee`` and the evidence tools) reuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from urpo.args import SamplingArgs
from urpo.engines.base import FinishReason, RolloutBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFGenerateEngine:
    """Samples with ``model.generate`` on the policy itself, so there is never a stale copy of the weights.

    Args:
        model: returns the policy to sample from (a callable, so that wrappers such as FSDP or LoRA added after the
            engine was built are used).
        tokenizer: the policy's tokenizer; prompts are tokenized without extra special tokens, since the chat
            template already placed them.
        synced_gpus: keep every rank generating until all ranks are done. Required when parameters are sharded
            (FSDP), where ranks that stop early would otherwise leave the others waiting in a collective forever.
        max_over_ranks: with ``synced_gpus``, returns the largest of a number over all ranks; used so that every
            rank runs as many ``generate`` calls as the busiest one (a rank with fewer chunks runs padding calls).
    """

    def __init__(
        self,
        model: Callable[[], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        synced_gpus: Callable[[], bool] | bool = False,
        max_over_ranks: Callable[[int], int] | None = None,
    ) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self._synced_gpus = synced_gpus
        self._max_over_ranks = max_over_ranks

    @property
    def synced_gpus(self) -> bool:
        return self._synced_gpus() if callable(self._synced_gpus) else self._synced_gpus

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the live policy."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingArgs) -> RolloutBatch:
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        flat = [ids for ids in prompt_ids for _ in range(n)]
        size = sampling.max_batch_size or len(flat) or 1
        chunks = [flat[start : start + size] for start in range(0, len(flat), size)]
        completions: list[list[int]] = []
        for chunk in chunks:
            completions.extend(self._generate_chunk(chunk, sampling))
        for _ in range(self._calls_needed(len(chunks)) - len(chunks)):
            self._generate_chunk([[self.tokenizer.pad_token_id]], sampling)  # padding call: joins the collectives
        eos = set(_eos_ids(self.tokenizer, self._model()))
        reasons: list[FinishReason] = ["stop" if ids and ids[-1] in eos else "length" for ids in completions]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return RolloutBatch(prompt_ids=prompt_ids, completion_ids=completions, texts=texts, finish_reasons=reasons)

    def _calls_needed(self, local_calls: int) -> int:
        if not self.synced_gpus or self._max_over_ranks is None:
            return local_calls
        return self._max_over_ranks(local_calls)

    def _generate_chunk(self, prompt_ids: list[list[int]], sampling: SamplingArgs) -> list[list[int]]:
        return generate_ids(
            self._model(),
            self.tokenizer,
            prompt_ids,
            sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            synced_gpus=self.synced_gpus,
        )


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float | None = None,
    top_p: float = 1.0,
    top_k: int | None = None,
    synced_gpus: bool = False,
) -> list[list[int]]:
    """The one ``model.generate`` call every urpo path uses: the rollout engine, ``urpo eval-referee`` and the
    evidence tools.

    Greedy when ``temperature`` is None (or 0), else sampled at that temperature from the ``top_p`` / ``top_k``
    (None: unlimited) truncated distribution. Prompts are left-padded into one batch; the model runs in eval mode
    (its train/eval mode is restored after). Each row is cut after its first EOS, which is kept.
    """
    input_ids, attention_mask = left_pad(prompt_ids, tokenizer.pad_token_id, _device_of(model))
    decoding = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k or 0}
        if temperature
        else {"do_sample": False}
    )
    eos_ids = _eos_ids(tokenizer, model)
    was_training = model.training
    # eval() turns off dropout and lets the KV cache work when gradient checkpointing is on.
    model.eval()
    try:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids,
            synced_gpus=synced_gpus,
            **decoding,
        )  # [B, P + T]
    finally:
        model.train(was_training)
    new_tokens = out[:, input_ids.shape[1] :].tolist()  # [B, T]
    return [_trim_completion(ids, eos_ids) for ids in new_tokens]


def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float | None = None,
    batch_size: int = 256,
) -> list[str]:
    """Decoded completions of rendered prompt texts, ``batch_size`` prompts per :func:`generate_ids` call; greedy
    when ``temperature`` is None. Prompts are tokenized without extra special tokens (the chat template placed them).
    """
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        completions = generate_ids(model, tokenizer, ids, max_new_tokens, temperature=temperature)
        texts += tokenizer.batch_decode(completions, skip_special_tokens=True)
    return texts


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask``, both ``[B, max_len]``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)  # [B, P]
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)  # [B, P]
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long, device=device)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def _trim_completion(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Cut a generated row after its first EOS, which is kept: the policy must learn to stop.

    Rows that never produced EOS carry no padding (``generate`` pads only rows that finished), so they stay whole.
    """
    for pos, token in enumerate(ids):
        if token in eos_ids:
            return ids[: pos + 1]
    return ids


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters())
    # FSDP2 parameters are DTensors whose .device is the local shard's device.
    return param.device
