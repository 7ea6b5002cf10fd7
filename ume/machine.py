"""What a measurement ran on, recorded next to every benchmark number.

Keys: "machine" (CPU model name), "cpu_count" (logical CPUs the OS reports), "threads" (torch's
intra-op thread count when measured, which is what bounds CPU kernels), "torch" (version) and
"date" (UTC). torch is imported only when called, so this module stays on the lowest floor.

Example:
    >>> info = machine_info()
    >>> info["cpu_count"] >= 1 and info["threads"] >= 1
    True
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """CPU model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, logical CPU count, torch threads, torch version and date (see module doc)."""
    import torch

    return {
        "machine": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
