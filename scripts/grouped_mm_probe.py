"""Does `torch._grouped_mm` help the MoE expert GEMMs on this CPU? Forward time of the two
expert GEMMs (no activation) for E 8, D 144, H 576 at 80 / 600 / 4000 token-slots, grouped_mm
vs a per-expert matmul loop (min of 3 x 10 calls, 1 thread), and whether its backward runs.

Usage: OMP_NUM_THREADS=1 python scripts/grouped_mm_probe.py
"""

from __future__ import annotations

import time

import torch

torch.set_num_threads(1)
E, D, H = 8, 144, 576
w1, w2 = torch.randn(E, D, H), torch.randn(E, H, D)
for n in (80, 600, 4000):
    counts = torch.full((E,), n // E)
    counts[0] += n - counts.sum()
    offs = counts.cumsum(0).to(torch.int32)
    x = torch.randn(n, D)
    ref = torch.cat([a @ w1[i] for i, a in enumerate(x.split(counts.tolist()))])
    assert torch.allclose(torch._grouped_mm(x, w1, offs=offs), ref, atol=1e-4)

    def grouped(x: torch.Tensor = x, offs: torch.Tensor = offs) -> None:
        torch._grouped_mm(torch._grouped_mm(x, w1, offs=offs), w2, offs=offs)

    def loop(x: torch.Tensor = x, sizes: list[int] = counts.tolist()) -> None:  # noqa: B006
        for i, a in enumerate(x.split(sizes)):
            (a @ w1[i]) @ w2[i]

    best: dict[str, float] = {}
    for _ in range(3):
        for name, f in (("grouped_mm", grouped), ("loop", loop)):
            f()
            t0 = time.perf_counter()
            for _ in range(10):
                f()
            ms = (time.perf_counter() - t0) / 10 * 1e3
            best[name] = min(best.get(name, ms), ms)
    print(n, "token-slots, forward ms:", {k: round(v, 3) for k, v in best.items()})
xg = torch.randn(80, D, requires_grad=True)
wg = w1.clone().requires_grad_(True)
offs = torch.arange(10, 81, 10, dtype=torch.int32)
try:
    torch._grouped_mm(xg, wg, offs=offs).sum().backward()
    print("backward: runs")
except RuntimeError as e:
    print("backward: fails:", str(e).splitlines()[0])
