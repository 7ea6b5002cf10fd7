"""Time one training step (forward + backward) of a preset's model in fp32 and under bf16
autocast on this CPU, alternating twice; prints the ratio. ume.device uses bf16 on CPUs with
native bf16 only, because on an AVX2-only CPU this measured bf16 at 3-6x the fp32 time.

Example:
    OMP_NUM_THREADS=1 python scripts/bf16_check.py small
"""

from __future__ import annotations

import sys
import time

import torch

from ume.config import load_config, preset_config
from ume.machine import machine_info
from ume.model.asr import ASRModel


def main(preset: str = "small") -> None:
    torch.set_num_threads(1)
    cfg = load_config(preset_config(preset))
    model = ASRModel(cfg.model, 300).train()
    feats, lens = torch.randn(12, 500, 80), torch.full((12,), 500)  # (B, T, F), (B,)
    ys, ylens = torch.randint(1, 290, (12, 20)), torch.full((12,), 20)  # (B, U), (B,)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(feats, lens, ys, ylens)
        (out["loss"] if isinstance(out, dict) else out[0]).backward()
        return time.perf_counter() - t0

    times: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True, False, True):
        step(bf16)  # warm-up
        times[bf16].append(step(bf16))
    fp32, bf16 = min(times[False]), min(times[True])
    print(
        f"{machine_info()} preset {preset}: fp32 {fp32:.3f} s/step, bf16 {bf16:.3f} s/step, "
        f"bf16/fp32 {bf16 / fp32:.2f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
