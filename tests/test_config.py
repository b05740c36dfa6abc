"""Every settings group rejects a bad value with urpo's ConfigError, naming the setting."""

import pytest

from urpo.config import GRPOArgs, LoggingArgs, RolloutCorrectionArgs
from urpo.engines.vllm_engine import VLLMArgs
from urpo.errors import ConfigError
from urpo.lora import LoraArgs
from urpo.referee import RefereeTemplate
from urpo.rollout import SamplingArgs

BAD_SETTINGS = [
    (GRPOArgs, {"num_generations": 1}, "num_generations"),
    (GRPOArgs, {"num_iterations": 0}, "num_iterations"),
    (GRPOArgs, {"beta": -0.1}, "beta"),
    (GRPOArgs, {"epsilon_low": 1.0}, "epsilon_low"),
    (GRPOArgs, {"epsilon_high": -0.1}, "epsilon_high"),
    (GRPOArgs, {"dual_clip": 1.0}, "dual_clip"),
    (GRPOArgs, {"max_grad_norm": 0.0}, "max_grad_norm"),
    (GRPOArgs, {"max_tokens_per_micro_batch": 0}, "max_tokens_per_micro_batch"),
    (GRPOArgs, {"max_stalled_steps": 0}, "max_stalled_steps"),
    (LoggingArgs, {"parse_warning_after_steps": 0}, "parse_warning_after_steps"),
    (LoggingArgs, {"parse_warning_share": 0.0}, "parse_warning_share"),
    (RolloutCorrectionArgs, {"cap_max": 0.0}, "cap_max"),
    (RolloutCorrectionArgs, {"cap_min": 3.0, "cap_max": 2.0}, "cap_min"),
    (SamplingArgs, {"max_new_tokens": 0}, "max_new_tokens"),
    (SamplingArgs, {"temperature": 0.0}, "temperature"),
    (SamplingArgs, {"top_p": 1.5}, "top_p"),
    (VLLMArgs, {"kv_cache_memory_bytes": 0}, "kv_cache_memory_bytes"),
    (VLLMArgs, {"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    (LoraArgs, {"r": 0}, "lora.r"),
    (RefereeTemplate, {"max_response_chars": 0}, "max_response_chars"),
]


@pytest.mark.parametrize(("group", "kwargs", "name"), BAD_SETTINGS, ids=lambda v: getattr(v, "__name__", None))
def test_a_bad_setting_is_a_config_error_naming_it(group, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        group(**kwargs)


def test_config_error_stays_a_value_error():
    """Callers that caught ValueError from the settings groups still catch ConfigError."""
    assert issubclass(ConfigError, ValueError)
