"""PL_<SUBCOMMAND>__... environment variables: LightningCLI defaults that also override the YAML (urpo.launch_env)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from urpo.launch_env import env_options, with_env_options

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "PL_FIT__TRAINER__NUM_NODES": "2",
    "PL_FIT__MODEL__GRPO__BETA": "0.5",
    "PL_TEST__TRAINER__DEVICES": "4",
    "PL_FIT__CONFIG": "ignored.yaml",
    "PL_GLOBAL_SEED": "3",
}


def test_variables_become_options_of_their_subcommand_only():
    assert env_options("fit", ENV) == ["--model.grpo.beta", "0.5", "--trainer.num_nodes", "2"]
    assert env_options("validate", ENV) == []


def test_options_go_after_the_config_files_and_before_typed_options():
    argv = ["fit", "--config", "a.yaml", "--config=b.yaml", "--trainer.num_nodes", "8"]
    assert with_env_options(argv, ENV) == [
        "fit",
        "--config",
        "a.yaml",
        "--config=b.yaml",
        "--model.grpo.beta",
        "0.5",
        "--trainer.num_nodes",
        "2",
        "--trainer.num_nodes",
        "8",
    ]
    assert with_env_options(["plan", "--config", "a.yaml"], ENV) == ["plan", "--config", "a.yaml"]
    assert with_env_options(["fit", "--config", "a.yaml"], {}) == ["fit", "--config", "a.yaml"]


@pytest.mark.slow
def test_urpo_fit_takes_keys_from_the_environment_over_the_yaml(tiny_model_dir):
    """The resolved config of `urpo fit` (nothing is trained: --print_config) shows the environment's values."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PL_FIT__TRAINER__MAX_STEPS": "2",
        "PL_FIT__TRAINER__NUM_NODES": "3",
        "PL_FIT__MODEL__GRPO__BETA": "0.25",
        "PL_FIT__TRAINER__DEFAULT_ROOT_DIR": "/shared/runs",
    }
    cmd = [
        sys.executable,
        "-m",
        "urpo.cli",
        "fit",
        "--config",
        str(ROOT / "tests/configs/tiny.yaml"),
        "--model.policy.name_or_path",
        tiny_model_dir,
        "--trainer.num_nodes",
        "5",
        "--print_config",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout
    assert "max_steps: 2" in printed  # the YAML says 4
    assert "beta: 0.25" in printed
    assert "default_root_dir: /shared/runs" in printed  # a key the YAML does not set
    assert "num_nodes: 5" in printed  # an option typed on the command line still wins
    assert "args parameter is intended" not in out.stderr


def test_lightning_job_spec_runs_the_single_node_config_on_n_machines():
    """The spec docs/scaling.md shows for lightning-sdk's Job.run: same command, nodes and GPUs from the environment."""
    import shlex

    sys.path.insert(0, str(ROOT))
    from tools.lightning_job import job_spec

    spec = job_spec("configs/qwen7b.yaml", 2, "H100_X_8", extra_args=["--data.batch_size", "8"])
    assert spec["num_machines"] == 2 and spec["machine"] == "H100_X_8"
    argv = shlex.split(spec["command"])
    assert argv[:4] == ["urpo", "fit", "--config", "configs/qwen7b.yaml"]
    assert with_env_options(argv[1:], spec["env"]) == [
        "fit",
        "--config",
        "configs/qwen7b.yaml",
        "--trainer.devices",
        "8",
        "--trainer.num_nodes",
        "2",
        "--data.batch_size",
        "8",
    ]
    with pytest.raises(ValueError, match="num_machines"):
        job_spec("configs/qwen7b.yaml", 0)


def test_lightning_job_spec_binds_to_the_installed_sdk():
    sdk = pytest.importorskip("lightning_sdk", reason="lightning-sdk is not installed (pip install lightning-sdk)")
    import inspect

    sys.path.insert(0, str(ROOT))
    from tools.lightning_job import job_spec

    spec = job_spec("configs/qwen7b.yaml", 2, "H100_X_8")
    bound = inspect.signature(sdk.Job.run).bind(**{**spec, "machine": getattr(sdk.Machine, spec["machine"])})
    assert bound.arguments["num_machines"] == 2
