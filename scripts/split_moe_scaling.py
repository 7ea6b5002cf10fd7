"""Split-MoE forward+backward time against the number of experts E at fixed work (N tokens,
top-2: the FLOPs do not depend on E), so the E=16 / E=4 ratio shows how the rest scales.

    OMP_NUM_THREADS=1 python scripts/split_moe_scaling.py     # ~10 s
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ume.config import MoEConfig
from ume.machine import cpu_model
from ume.model.moe_split import split_moe

D, H, N, REPEATS = 256, 1024, 512, 7


def step_ms(e: int) -> float:
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=e, top_k=2, router_init="normal", router_init_std=1.0)
    entry, exit_ = split_moe(nn.Linear(D, H), nn.Linear(H, D), e, 2, moe_cfg=cfg)
    x = torch.randn(N, D)

    def step() -> None:
        exit_(torch.relu(entry(x))).sum().backward()

    step()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main() -> None:
    torch.set_num_threads(1)
    ms = {e: step_ms(e) for e in (4, 16)}
    print(f"machine: {cpu_model()}, 1 thread; D={D} H={H} N={N} top-2, best of {REPEATS}")
    for e, t in ms.items():
        print(f"E={e:2d}: forward+backward {t:.1f} ms")
    print(f"ratio E=16 / E=4: {ms[16] / ms[4]:.2f}")


if __name__ == "__main__":
    main()
