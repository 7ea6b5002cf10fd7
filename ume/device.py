"""Where tensors live: device choice, autocast precision per device, DDP backend per device.

One small leaf (imports only torch) that train, decode and bench share, so that no command
hard-codes "cpu" or "gloo":

* ``resolve_device("auto")`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``"cuda"`` without
  CUDA is a clear error, not a crash deep inside a forward. Under torchrun, each process takes
  the GPU of its ``LOCAL_RANK``.
* ``autocast_dtype(device, "bf16")`` -> ``torch.bfloat16`` on CUDA with bf16 support and on CPUs
  with native bf16 (AVX512-BF16/AMX; emulated bf16 on AVX2 is slower than fp32), else
  ``None`` (fp32) with a warning; ``"fp32"`` -> ``None``.
* ``ddp_backend(device)`` -> ``"nccl"`` on CUDA, ``"gloo"`` on CPU.

Example:
    >>> dev = resolve_device("auto")                 # device(type='cpu') on a CPU-only machine
    >>> dtype = autocast_dtype(dev, "bf16")          # torch.bfloat16 or None
    >>> with autocast(dev, dtype):
    ...     out = model(feats.to(dev), lens.to(dev))
    >>> dist.init_process_group(ddp_backend(dev))
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from ume.errors import UmeError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16")


class DeviceError(UmeError):
    """The requested device cannot be used here; the message says why and what to use."""


def local_rank() -> int | None:
    """torchrun's LOCAL_RANK (this process's index on its machine), or None outside torchrun."""
    v = os.environ.get("LOCAL_RANK")
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise DeviceError(f"LOCAL_RANK={v!r} is not an integer (set by torchrun)") from None


def resolve_device(name: str = "auto", rank_on_node: int | None = None) -> torch.device:
    """'cpu' | 'cuda' | 'auto' (| 'cuda:N') -> torch.device.

    With CUDA and `rank_on_node` (default: LOCAL_RANK when launched by torchrun), the process
    takes GPU number `rank_on_node`, so `torchrun --nproc_per_node 8` uses the 8 GPUs of a node.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    name = (name or "auto").strip().lower()
    base, _, index = name.partition(":")
    if base not in DEVICE_CHOICES or (index and (base != "cuda" or not index.isdigit())):
        raise DeviceError(f"--device {name!r}: use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if base == "cpu":
        return torch.device("cpu")
    have_cuda = torch.cuda.is_available()
    if base == "auto":
        if not have_cuda:
            return torch.device("cpu")
        base = "cuda"
    if not have_cuda:
        built = torch.version.cuda or "none (a CPU-only build)"
        raise DeviceError(
            f"--device {name}: CUDA is not available here (torch {torch.__version__}, CUDA "
            f"{built}, {torch.cuda.device_count()} GPU(s) visible). Use --device cpu, or "
            "--device auto to take a GPU only when there is one"
        )
    count = torch.cuda.device_count()
    if index:
        i = int(index)
    else:
        lr = local_rank() if rank_on_node is None else rank_on_node
        i = lr if lr is not None else 0
    if i >= count:
        raise DeviceError(
            f"--device {name}: GPU {i} requested (LOCAL_RANK/index) but only {count} visible; "
            "use --nproc_per_node <= the number of GPUs per node"
        )
    return torch.device("cuda", i)


def cpu_supports_bf16() -> bool:
    """True where CPU bf16 autocast is worthwhile: native bf16 (AVX512-BF16 or AMX). Without it,
    bf16 is emulated and a training step takes several times the fp32 time (measure it with
    `python scripts/bf16_check.py small`), so such CPUs train in fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older/other builds without these probes
        return False


def sync(device: torch.device) -> None:
    """Wait until `device` has finished its queued work (CUDA runs kernels asynchronously, so
    a timer without it measures only the launch); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def autocast_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` ('fp32' | 'bf16') on `device`; None = no autocast.

    bf16 on a device without bf16 support falls back to fp32 (a warning says so).

    Example:
        >>> autocast_dtype(torch.device("cpu"), "fp32") is None
        True
    """
    if precision not in PRECISIONS:
        raise UmeError(f"precision {precision!r}: use one of {PRECISIONS}")
    if precision == "fp32":
        return None
    device = torch.device(device)
    if bf16_supported(device):
        return torch.bfloat16
    log.warning("precision bf16: %s has no bf16 support here; training in fp32", device)
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """A torch.autocast context for `device` (a no-op context when dtype is None)."""
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def ddp_backend(device: torch.device | str) -> str:
    """Process-group backend for `device`: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"
