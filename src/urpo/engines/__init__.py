"""Rollout engines beyond the default HF-generate one (:mod:`urpo.rollout`).

* :mod:`urpo.engines.vllm_engine`: :class:`~urpo.engines.vllm_engine.VLLMEngine`, vLLM in the trainer's process
  (``model.rollout.engine: vllm``; needs the ``vllm`` extra, imported only when the engine starts). The gap between
  its sampling probabilities and the trainer's is measured and corrected with the objective, in
  :mod:`urpo.correction`.

Importing this package never imports vLLM.
"""
