"""Learning tests train tiny models for many steps: one intra-op thread each."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine (CI runners, parallel jobs) thread
    contention makes each of the many small ops of a step wait: a run took ten times longer with two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
