"""Expert FFNs over expert-sorted rows, with a hand-written backward (the MoE graph path).

`expert_ffn(xs, sizes, w_1, b_1, w_2, b_2, activation, p_drop)` computes, for each expert e
and its contiguous block of rows in xs,

    y_e = drop(act(x_e · w_1[e] + b_1[e])) · w_2[e] + b_2[e]

with the same addmm calls as the no-graph path in moe.py, so forward values are identical.
Why a custom autograd.Function: expressed with autograd ops, the per-expert weights are views
from `unbind`, whose backward stacks E per-expert gradients into fresh (E, D, H) tensors (a
`cat` per parameter and step: a quarter of a 256-token forward+backward at D = 144). Here each
expert's weight gradient is written with `out=` straight into its slice of one (E, ·, ·)
gradient buffer, and the input gradient into its rows; experts with no rows get zero
gradients. Frozen weights (requires_grad False) get no gradient work at all.

Example:
    >>> w_1, b_1 = torch.randn(2, 4, 8), torch.zeros(2, 8)
    >>> w_2, b_2 = torch.randn(2, 8, 4), torch.zeros(2, 4)
    >>> expert_ffn(torch.randn(5, 4), [3, 2], w_1, b_1, w_2, b_2, "swish").shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activate(h: torch.Tensor, activation: str, inplace: bool = False) -> torch.Tensor:
    """The experts' activation by name: "swish" (SiLU) or "relu"."""
    return F.silu(h, inplace=inplace) if activation == "swish" else F.relu(h, inplace=inplace)


def _act_grad(grad: torch.Tensor, h: torch.Tensor, activation: str) -> torch.Tensor:
    """d act(h) / dh · grad."""
    if activation == "swish":
        return torch.ops.aten.silu_backward(grad, h)
    return grad * (h > 0).to(grad.dtype)


class _ExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, w_1, b_1, w_2, b_2, sizes, activation, p_drop):  # noqa: ANN001, ANN205
        s, d = xs.shape
        hid = xs.new_empty(s, w_1.size(2))  # pre-activation (S, H), saved for backward
        acts = torch.empty_like(hid)  # activation output (after dropout), saved
        ys = xs.new_empty(s, d)
        mask = None
        if p_drop > 0:
            mask = torch.empty_like(hid).bernoulli_(1.0 - p_drop).div_(1.0 - p_drop)
        start = 0
        for e, c in enumerate(sizes):
            if c == 0:
                continue
            rows = slice(start, start + c)
            torch.addmm(b_1[e], xs[rows], w_1[e], out=hid[rows])
            a = activate(hid[rows], activation)
            if mask is not None:
                a = a * mask[rows]
            acts[rows] = a
            torch.addmm(b_2[e], acts[rows], w_2[e], out=ys[rows])
            start += c
        ctx.save_for_backward(xs, w_1, w_2, hid, acts, mask)
        ctx.sizes, ctx.activation = sizes, activation
        return ys

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        xs, w_1, w_2, hid, acts, mask = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        gy = gy.contiguous()
        gx = torch.empty_like(xs) if need_x else None
        gw1 = torch.empty_like(w_1) if need_w1 else None
        gb1 = w_1.new_empty(w_1.size(0), w_1.size(2)) if need_b1 else None
        gw2 = torch.empty_like(w_2) if need_w2 else None
        gb2 = w_2.new_empty(w_2.size(0), w_2.size(2)) if need_b2 else None
        start = 0
        for e, c in enumerate(ctx.sizes):
            if c == 0:  # an expert without rows: zero gradient
                for g in (gw1, gb1, gw2, gb2):
                    if g is not None:
                        g[e].zero_()
                continue
            rows = slice(start, start + c)
            start += c
            g_e = gy[rows]  # (c, D)
            if gw2 is not None:
                torch.mm(acts[rows].t(), g_e, out=gw2[e])
            if gb2 is not None:
                torch.sum(g_e, 0, out=gb2[e])
            if not (need_x or need_w1 or need_b1):
                continue
            g_a = g_e @ w_2[e].t()  # (c, H)
            if mask is not None:
                g_a.mul_(mask[rows])
            g_h = _act_grad(g_a, hid[rows], ctx.activation)
            if gw1 is not None:
                torch.mm(xs[rows].t(), g_h, out=gw1[e])
            if gb1 is not None:
                torch.sum(g_h, 0, out=gb1[e])
            if gx is not None:
                torch.mm(g_h, w_1[e].t(), out=gx[rows])
        return gx, gw1, gb1, gw2, gb2, None, None, None


def expert_ffn(
    xs: torch.Tensor,
    sizes: list[int],
    w_1: torch.Tensor,
    b_1: torch.Tensor,
    w_2: torch.Tensor,
    b_2: torch.Tensor,
    activation: str,
    p_drop: float = 0.0,
) -> torch.Tensor:
    """xs (S, D) rows sorted by expert, sizes (E,) rows per expert, stacked weights
    w_1 (E, D, H), b_1 (E, H), w_2 (E, H, D), b_2 (E, D) -> (S, D)."""
    if sum(sizes) != xs.size(0):
        raise ValueError(f"expert sizes sum to {sum(sizes)}, but there are {xs.size(0)} rows")
    if activation not in ("swish", "relu"):
        raise ValueError(f"expert activation {activation!r}: use 'swish' or 'relu'")
    return _ExpertFFN.apply(xs, w_1, b_1, w_2, b_2, sizes, activation, p_drop)
