"""ume.machine: one machine_info with honest keys (cpu_count is the CPU count, threads the torch
thread count; the rtf benchmark used to report the thread count as cpu_count)."""

from __future__ import annotations

import os

import torch

from ume.machine import machine_info


def test_machine_info_keys_mean_what_they_say() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        info = machine_info()
    finally:
        torch.set_num_threads(before)
    assert info["cpu_count"] == os.cpu_count()
    assert info["threads"] == 1
    assert info["torch"] == torch.__version__ and info["machine"]
