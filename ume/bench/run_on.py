"""Where and in what precision a layer benchmark runs: the device, the compute dtype, the
synchronisation around each timed call, and the fields every result row names them by.

`RunOn.for_args("cuda", "bfloat16")` resolves the device (`ume.device.resolve_device`: "auto"
takes the GPU when there is one; "cuda" without CUDA is a DeviceError that says what to use)
and checks the dtype:

    float32   modules and inputs in float32, no autocast.
    bfloat16  float32 weights and inputs run under `torch.autocast(device_type, bfloat16)`:
              what `ume train --set train.precision=bf16` does, so fwd+bwd times include
              autocast's weight casts, as a training step pays them. CUDA without bf16 support
              is refused; a CPU without native bf16 (AVX512-BF16/AMX) runs it emulated and a
              warning says the times are not what a bf16 CPU would give.

`sync()` waits for the device's queued work (CUDA kernels run asynchronously; without it a
timer measures only the launch), a no-op on the CPU. `fields()` -> {"device", "gpu", "dtype",
"autocast"} for result rows.

Example:
    >>> on = RunOn.for_args("cpu", "float32")
    >>> with on.autocast():
    ...     on.sync(); y = layer(x.to(on.device)); on.sync()
    >>> on.fields()
    {'device': 'cpu', 'gpu': None, 'dtype': 'float32', 'autocast': False}
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from ume.device import DeviceError, bf16_supported, resolve_device, sync

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RunOn:
    """A resolved device and compute dtype (float32, or bfloat16 under autocast)."""

    device: torch.device
    dtype: torch.dtype = torch.float32

    @classmethod
    def for_args(cls, device: str = "cpu", dtype: str = "float32") -> RunOn:
        """--device {cpu,cuda,auto} and --dtype {float32,bfloat16} -> RunOn, or a DeviceError
        naming the problem and the option to use instead."""
        if dtype not in DTYPES:
            raise DeviceError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        dev = resolve_device(device)
        on = cls(dev, DTYPES[dtype])
        if on.dtype == torch.bfloat16 and not bf16_supported(dev):
            if dev.type == "cuda":
                raise DeviceError(
                    f"--dtype bfloat16: {on.gpu_name()} has no bf16 support; use --dtype float32"
                )
            log.warning(
                "--dtype bfloat16 on a CPU without native bf16 (AVX512-BF16/AMX): autocast "
                "emulates it, so these times are far slower than float32 and than a bf16 CPU"
            )
        return on

    @property
    def autocast_on(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast(device type, dtype) for bfloat16; a no-op context for float32."""
        if not self.autocast_on:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        """Wait until the device has finished its queued work (CUDA); no-op on the CPU."""
        sync(self.device)

    def gpu_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    def fields(self) -> dict:
        """What a result row records about where it ran (see module doc)."""
        return {
            "device": str(self.device),
            "gpu": self.gpu_name(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "autocast": self.autocast_on,
        }
