"""Rollout engines, all behind one interface (:mod:`urpo.engines.base`: ``RolloutEngine``, ``RolloutBatch``).

* :mod:`urpo.engines.hf_engine`: :class:`~urpo.engines.hf_engine.HFGenerateEngine`, the default: ``transformers``'
  ``generate`` on the live policy (``model.rollout.engine: hf``).
* :mod:`urpo.engines.vllm_engine`: :class:`~urpo.engines.vllm_engine.VLLMEngine`, vLLM in the trainer's process
  (``model.rollout.engine: vllm``; needs the ``vllm`` extra, imported only when the engine starts). The gap between
  its sampling probabilities and the trainer's is measured and corrected with the objective, in
  :mod:`urpo.correction`.

Importing this package never imports vLLM.
"""
