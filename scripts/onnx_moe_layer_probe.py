"""One MoE layer (D 144, H 576, E 8, k 2, swish) in onnxruntime: the fused com.microsoft.MoE
node vs the portable graph vs one dense FFN, at 40 / 100 / 400 tokens, 1 thread, best of
3 x 50 calls (ms).

Usage: OMP_NUM_THREADS=1 python scripts/onnx_moe_layer_probe.py [WORKDIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ume.config import MoEConfig
from ume.decode.export import ort_session, set_moe_export_dispatch
from ume.decode.onnx_moe import fused_moe_layers
from ume.decode.onnx_trace import trace_to_onnx
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward


class Wrap(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    d, h = 144, 576
    moe = MoEFeedForward(d, h, "swish", 0.0, MoEConfig(num_experts=8, top_k=2)).eval()
    with torch.no_grad():
        moe.router.weight.normal_(0, 0.5)  # tokens spread over the experts
    x = torch.randn(1, 100, d)
    axes = {"x": {1: "T"}, "y": {1: "T"}}
    w = Wrap(moe).eval()
    with fused_moe_layers(w):
        trace_to_onnx(w, (x,), work / "fused.onnx", ["x"], ["y"], axes)
    set_moe_export_dispatch(moe, "masked")
    trace_to_onnx(w, (x,), work / "portable.onnx", ["x"], ["y"], axes)
    trace_to_onnx(Wrap(FeedForward(d, h).eval()), (x,), work / "dense.onnx", ["x"], ["y"], axes)
    sessions = {n: ort_session(work / f"{n}.onnx", 1) for n in ("dense", "fused", "portable")}
    for n_tok in (40, 100, 400):
        xt = np.random.default_rng(0).standard_normal((1, n_tok, d)).astype(np.float32)
        best: dict[str, float] = {}
        for _ in range(3):
            for name, s in sessions.items():
                for _ in range(5):
                    s.run(None, {"x": xt})
                t0 = time.perf_counter()
                for _ in range(50):
                    s.run(None, {"x": xt})
                ms = (time.perf_counter() - t0) / 50 * 1e3
                best[name] = min(best.get(name, ms), ms)
        print(n_tok, "tokens, ms:", {k: round(v, 3) for k, v in best.items()})


if __name__ == "__main__":
    main()
