"""Expert FFNs as `torch._grouped_mm` calls over expert-sorted rows (the "grouped" MoE dispatch
path), and the predicate that says where that operator may run.

`grouped_expert_ffn(xs, counts, w_1, b_1, w_2, b_2, activation, p_drop, graph)` computes, for
each expert e and its contiguous block of counts[e] rows in xs,

    y_e = drop(act(x_e · w_1[e] + b_1[e])) · w_2[e] + b_2[e]

with one grouped GEMM per weight matrix (offs = cumsum(counts), int32) and the biases added per
row. The same affine maps as the per-expert addmm loop; the values agree within float rounding
(addmm adds the bias inside the GEMM, here it is added after).

Backward: `_GroupedMM` makes the incoming gradient contiguous first. A gradient that autograd
hands over expanded (`y.sum().backward()` gives a stride-0 tensor) is refused by torch's own
backward of `_grouped_mm` ("Invalid strides/sizes"). Then, per group,
    grad_x = g · w[e]ᵀ   one grouped GEMM against the transposed (E, H, D) view
    grad_w = x_eᵀ · g_e  one 2-D x 2-D grouped GEMM, groups along the contraction dim -> (E, D, H)
An expert without rows gets a zero weight gradient.

Where it runs (`grouped_mm_qualifies`): torch has `_grouped_mm` and it runs for this device type
and dtype (float32, bfloat16 or float16; a tiny probe, once per process); D and H rows of a
16-byte multiple (D and H x element size); contiguous weights with 16-byte aligned storage; on CUDA only where torch has its native grouped kernel (bf16 on
compute capability 9.x or 10.x, not ROCm; `cuda_native_grouped_mm`), elsewhere torch would loop
over groups itself. Where it does not qualify the dispatch runs the loop instead, without error.

Example:
    >>> w_1, b_1 = torch.randn(2, 4, 8), torch.zeros(2, 8)
    >>> w_2, b_2 = torch.randn(2, 8, 4), torch.zeros(2, 4)
    >>> grouped_expert_ffn(torch.randn(5, 4), torch.tensor([3, 2]), w_1, b_1, w_2, b_2,
    ...                    "swish").shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ume.model.expert_ffn import activate

_ALIGN_BYTES = 16
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_RUNS: dict[tuple[str, torch.dtype], bool] = {}  # (device type, dtype) -> the probe's answer


def cuda_native_grouped_mm(capability: tuple[int, int], dtype: torch.dtype, hip: bool) -> bool:
    """Whether torch runs its native grouped GEMM kernel on this CUDA device: bf16 operands and
    output on compute capability 9.x (Hopper) or 10.x (Blackwell), not ROCm. Elsewhere torch's
    CUDA `_grouped_mm` copies offs to the host and loops over mm per group: no gain over ours."""
    return not hip and dtype == torch.bfloat16 and capability[0] in (9, 10)


def grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` exists and runs (forward and the 2-D x 2-D weight-gradient
    form) for this device type and dtype; a tiny probe, once per process and key."""
    key = (device.type, dtype)
    if key not in _RUNS:
        _RUNS[key] = _probe(device, dtype)
    return _RUNS[key]


def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    fn = getattr(torch, "_grouped_mm", None)
    if fn is None or dtype not in _GROUPED_DTYPES:
        return False
    try:
        x = torch.ones(3, 8, device=device, dtype=dtype)
        w = torch.ones(2, 8, 8, device=device, dtype=dtype)
        offs = torch.tensor([1, 3], device=device, dtype=torch.int32)
        y = fn(x, w, offs=offs)  # (3, 8)
        gw = fn(x.t(), y, offs=offs)  # (2, 8, 8)
        return bool(y.shape == (3, 8) and gw.shape == (2, 8, 8))
    # AssertionError: a CPU-only torch build asked for a CUDA tensor
    except (RuntimeError, NotImplementedError, TypeError, AssertionError):
        return False


def forget_probes() -> None:
    """Drop the cached probe answers (tests; after swapping torch builds in one process)."""
    _RUNS.clear()


def _aligned(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % _ALIGN_BYTES == 0


def grouped_mm_qualifies(
    device: torch.device,
    dtype: torch.dtype,
    d_model: int,
    d_ff: int,
    weights: tuple[torch.Tensor, ...] = (),
) -> bool:
    """Whether the grouped path may run the expert GEMMs in `dtype` on `device`: the operator
    runs there, D and H rows are 16-byte multiples, the weights contiguous and 16-byte aligned,
    and on CUDA the native kernel exists (`cuda_native_grouped_mm`)."""
    size = dtype.itemsize
    if (d_model * size) % _ALIGN_BYTES or (d_ff * size) % _ALIGN_BYTES:
        return False
    if not all(_aligned(w) for w in weights):
        return False
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if not cuda_native_grouped_mm(cap, dtype, torch.version.hip is not None):
            return False
    return grouped_mm_runs(device, dtype)


class _GroupedMM(torch.autograd.Function):
    """x (S, K) rows sorted by group, w (E, K, M), offs (E,) int32 row ends -> (S, M)."""

    @staticmethod
    def forward(ctx, x, w, offs):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, w, offs)
        return torch._grouped_mm(x, w, offs=offs)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        x, w, offs = ctx.saved_tensors
        g = g.contiguous()  # expanded gradients (stride 0) are refused by _grouped_mm
        gx = torch._grouped_mm(g, w.transpose(1, 2), offs=offs) if ctx.needs_input_grad[0] else None
        gw = torch._grouped_mm(x.t(), g, offs=offs) if ctx.needs_input_grad[1] else None
        return gx, gw, None


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (S, K) sorted by group, w (E, K, M), offs (E,) int32 cumulative row counts -> (S, M);
    differentiable in x and w, whatever the layout of the incoming gradient."""
    return _GroupedMM.apply(x, w, offs)


def grouped_expert_ffn(
    xs: torch.Tensor,
    counts: torch.Tensor,
    w_1: torch.Tensor,
    b_1: torch.Tensor,
    w_2: torch.Tensor,
    b_2: torch.Tensor,
    activation: str,
    p_drop: float = 0.0,
    graph: bool = True,
) -> torch.Tensor:
    """xs (S, D) rows sorted by expert, counts (E,) rows per expert (sum S), stacked weights
    w_1 (E, D, H), b_1 (E, H), w_2 (E, H, D), b_2 (E, D) -> (S, D). p_drop > 0: dropout on the
    hidden activations. graph False: no autograd graph (in-place bias, activation, dropout)."""
    if activation not in ("swish", "relu"):
        raise ValueError(f"expert activation {activation!r}: use 'swish' or 'relu'")
    s = xs.size(0)
    offs = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert's block
    row_e = torch.repeat_interleave(
        torch.arange(counts.numel(), device=xs.device), counts, output_size=s
    )  # (S,) expert of each row
    if not graph:
        h = torch._grouped_mm(xs, w_1, offs=offs).add_(b_1.index_select(0, row_e))  # (S, H)
        activate(h, activation, inplace=True)
        if p_drop > 0:
            F.dropout(h, p_drop, True, inplace=True)
        return torch._grouped_mm(h, w_2, offs=offs).add_(b_2.index_select(0, row_e))  # (S, D)
    h = grouped_mm(xs, w_1, offs) + b_1.index_select(0, row_e)  # (S, H)
    h = activate(h, activation)
    if p_drop > 0:
        h = F.dropout(h, p_drop, True)
    return grouped_mm(h, w_2, offs) + b_2.index_select(0, row_e)  # (S, D)
