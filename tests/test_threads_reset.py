"""tests/conftest.py gives every test one torch thread, even after a test (or a CLI call in
it, such as `ume bench rtf --threads 2`) changed the count: the leak made the default suite
3x slower on a busy 2-core machine. Pytest runs a file's tests in order."""

from __future__ import annotations

import torch


def test_a_test_may_change_the_thread_count() -> None:
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2


def test_the_next_test_starts_with_one_thread_again() -> None:
    assert torch.get_num_threads() == 1
