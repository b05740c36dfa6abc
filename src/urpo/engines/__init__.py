"""Rollout engines beyond the default HF-generate one (:mod:`urpo.rollout`), and the train/inference mismatch.

* :mod:`urpo.engines.vllm_engine`: :class:`~urpo.engines.vllm_engine.VLLMEngine`, vLLM in the trainer's process
  (``model.rollout.engine: vllm``; needs the ``vllm`` extra, imported only when the engine starts).
* :mod:`urpo.engines.correction`: measuring and correcting the gap between the engine's sampling probabilities and
  the trainer's (truncated importance sampling).

Importing this package never imports vLLM.
"""
