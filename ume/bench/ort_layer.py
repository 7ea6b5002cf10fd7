"""One MoE layer (and the dense FFN it is compared with) as onnxruntime sessions, for
`ume bench moe --onnx`: the graphs `ume export` writes for MoE layers, "portable" (standard
ops: per expert a NonZero/gather, its FFN, a gated scatter-add) and "fused" (one
com.microsoft.MoE node, where this onnxruntime runs it), traced from the very layer eager
times, so both see the same weights and routing.

Example:
    >>> fns = ort_layer_fns(moe, dense, x, threads=1)   # {"ort_portable": f, "ort_fused": f, ...}
    >>> fns["ort_portable"]()                            # one session.run on x
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ume.decode.export import moe_export_mode, ort_session
from ume.decode.onnx_moe import fused_moe_supported, why_not_fused
from ume.decode.onnx_trace import trace_to_onnx
from ume.model.moe import MoEFeedForward


class _Wrap(nn.Module):
    """x (1, T, D) -> (1, T, D): the layer alone, as the graph's whole computation."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _export(module: nn.Module, x: torch.Tensor, path: Path, moe_op: str | None = None) -> Path:
    axes = {"x": {1: "T"}, "y": {1: "T"}}
    w = _Wrap(module).eval()
    if moe_op is None:
        trace_to_onnx(w, (x,), path, ["x"], ["y"], axes)
        return path
    with moe_export_mode(w, moe_op):  # the layer is w's child: swapped for its fused form
        trace_to_onnx(w, (x,), path, ["x"], ["y"], axes)
    return path


def ort_layer_fns(
    moe: MoEFeedForward,
    dense: nn.Module,
    x: torch.Tensor,
    threads: int,
    work: Path | None = None,
) -> dict[str, Callable[[], None]]:
    """{"ort_portable", "ort_fused" (when this onnxruntime and layer allow it), "ort_dense"}:
    one session.run on x (1, T, D) each. Each MoE graph's output is checked against the eager
    layer (1e-4), else RuntimeError."""
    work = work or Path(tempfile.mkdtemp(prefix="ume_bench_ort_"))
    moe.eval()
    ops = ["portable"]
    if why_not_fused(moe) is None and fused_moe_supported():
        ops.append("fused")
    paths = {}
    for op in ops:
        paths[f"ort_{op}"] = _export(moe, x, work / f"moe_{op}.onnx", op)
    paths["ort_dense"] = _export(dense.eval(), x, work / "dense.onnx")
    feed = {"x": x.detach().numpy()}
    with torch.inference_mode():
        ref = moe(x).numpy()
    fns: dict[str, Callable[[], None]] = {}
    for name, path in paths.items():
        sess = ort_session(path, threads)
        if name != "ort_dense":
            diff = float(abs(sess.run(None, feed)[0] - ref).max())
            if diff > 1e-4:
                raise RuntimeError(f"onnxruntime {name} MoE layer differs from eager by {diff:.2e}")
        fns[name] = lambda s=sess: s.run(None, feed)
    return fns
