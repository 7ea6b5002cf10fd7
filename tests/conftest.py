"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tests use tiny tensors: extra intra-op threads only add OpenMP spin-waits (seconds per
    test on a busy 2-core machine, versus ~0.1 s with one thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
