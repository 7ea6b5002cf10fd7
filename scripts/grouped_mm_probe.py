"""Does `torch._grouped_mm` help the MoE expert GEMMs on this CPU? The two expert GEMMs (no
bias, no activation) for E 8, D 144, H 576 at 80 / 600 / 4000 token-slots (uneven counts, one
expert without rows), grouped_mm vs a per-expert matmul loop, forward and forward+backward
(gradients of x, w_1 and w_2 for a contiguous incoming gradient; torch's own backward of
_grouped_mm), min of 3 rounds x 10 calls, 1 thread. Also: both give the same values and
gradients, and why the first version of this probe saw the backward "fail" (an expanded
incoming gradient, from .sum().backward(); ume's grouped path makes it contiguous first).

Usage: OMP_NUM_THREADS=1 python scripts/grouped_mm_probe.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

torch.set_num_threads(1)
torch.manual_seed(0)
E, D, H = 8, 144, 576
w1, w2 = torch.randn(E, D, H) / D**0.5, torch.randn(E, H, D) / H**0.5


def split_counts(n: int) -> torch.Tensor:
    """Uneven per-expert rows summing to n, expert 3 without rows."""
    share = torch.tensor([3.0, 2.0, 1.5, 0.0, 1.0, 1.0, 0.75, 0.75])
    counts = (share / share.sum() * n).floor().long()
    counts[0] += n - counts.sum()
    return counts


def grouped(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return torch._grouped_mm(torch._grouped_mm(x, a, offs=offs), b, offs=offs)


def loop(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return torch.cat([(c @ a[e]) @ b[e] for e, c in enumerate(x.split(sizes)) if sizes[e]])


def best_ms(fns: dict[str, Callable[[], object]], rounds: int = 3, calls: int = 10) -> dict:
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, f in fns.items():
            f()
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            ms = (time.perf_counter() - t0) / calls * 1e3
            best[name] = min(best.get(name, ms), ms)
    return best


def fwd_bwd(forward: Callable[..., torch.Tensor], x: torch.Tensor, g: torch.Tensor) -> Callable:
    a, b = w1.clone().requires_grad_(True), w2.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)

    def run() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(forward(xg, a, b), (xg, a, b), grad_outputs=g)

    return run


for n in (80, 600, 4000):
    counts = split_counts(n)
    sizes, offs = counts.tolist(), counts.cumsum(0).to(torch.int32)
    x, g = torch.randn(n, D), torch.randn(n, D)
    fg = fwd_bwd(lambda x, a, b, offs=offs: grouped(x, a, b, offs), x, g)
    fl = fwd_bwd(lambda x, a, b, sizes=sizes: loop(x, a, b, sizes), x, g)
    diff_y = (grouped(x, w1, w2, offs) - loop(x, w1, w2, sizes)).abs().max().item()
    diff_g = max((p - q).abs().max().item() for p, q in zip(fg(), fl()))
    fwd = best_ms(
        {
            "grouped_mm": lambda x=x, offs=offs: grouped(x, w1, w2, offs),
            "loop": lambda x=x, sizes=sizes: loop(x, w1, w2, sizes),
        }
    )
    both = best_ms({"grouped_mm": fg, "loop": fl})
    print(
        f"{n} token-slots (counts {sizes}): max |diff| values {diff_y:.1e}, grads {diff_g:.1e}\n"
        f"  forward ms  grouped_mm {fwd['grouped_mm']:.3f}  loop {fwd['loop']:.3f}  "
        f"grouped/loop {fwd['grouped_mm'] / fwd['loop']:.2f}\n"
        f"  fwd+bwd ms  grouped_mm {both['grouped_mm']:.3f}  loop {both['loop']:.3f}  "
        f"grouped/loop {both['grouped_mm'] / both['loop']:.2f}"
    )

xg = torch.randn(80, D, requires_grad=True)
wg = w1.clone().requires_grad_(True)
offs = split_counts(80).cumsum(0).to(torch.int32)
y = torch._grouped_mm(xg, wg, offs=offs)
try:
    y.sum().backward(retain_graph=True)
    print("backward of y.sum() (expanded, stride-0 incoming gradient): runs")
except RuntimeError as e:
    print("backward of y.sum() (expanded, stride-0 incoming gradient): fails:", str(e)[:60])
y.backward(torch.ones_like(y))  # the same gradient values, contiguous
print("backward with a contiguous incoming gradient: runs")
