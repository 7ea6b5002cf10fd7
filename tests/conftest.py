"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: extra intra-op threads only add OpenMP spin-waits (seconds per
    test on a busy 2-core machine, versus ~0.1 s with one thread). Set before EVERY test: a
    CLI call inside a test may change it (`ume bench rtf` sets its --threads, default 2, even
    when it then stops on a bad --device), which made every later test 10-40x slower."""
    torch.set_num_threads(1)
    yield
