"""Offline fixtures: a byte-level BPE tokenizer trained on the fly and a tiny random Qwen2 model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from tests.helpers import build_tiny_model


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny Qwen2 + tokenizer folder, loadable by ``ModelArgs(name_or_path=...)``."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(autouse=True)
def unseeded_run():
    """Each test starts with no run seed recorded, so the streams derived from it (``urpo.args.run_seed``) use 0
    unless the test calls ``seed_everything`` itself, whatever an earlier test seeded."""
    saved = os.environ.pop("PL_GLOBAL_SEED", None)
    yield
    os.environ.pop("PL_GLOBAL_SEED", None)
    if saved is not None:
        os.environ["PL_GLOBAL_SEED"] = saved
