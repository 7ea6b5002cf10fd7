"""int8 copies of `ume export`'s graphs for onnxruntime on the CPU.

`quantize_graph(src, dst)`:
    dense layers  onnxruntime.quantization.quantize_dynamic: every MatMul/Gemm whose weight is
                  a constant gets int8 weights (per output column scales) and dynamically
                  quantised uint8 activations (one scale per call); attention's
                  activation x activation products stay float32 (MatMulConstBOnly).
    MoE layers    every com.microsoft.MoE node becomes com.microsoft.QMoE with 8-bit expert
                  weights: symmetric per output row, scale = max|w| / 127, stored as uint8
                  q + 128 (the operator's zero point), layout (E, out, in) as in MoE; biases,
                  routing and activation unchanged. Checked against a dequantised reference
                  by tests/test_onnx_moe.py.
The portable MoE graph's per-expert MatMuls are quantised as dense layers.

Values change by design (int8 rounding): the accuracy cost is measured as MER on the test
splits (`ume bench onnx --mer`, docs/PERFORMANCE.md), not checked against eager within 1e-4.

Example:
    >>> quantize_graph("deploy/encoder.onnx", "deploy_int8/encoder.onnx")
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

MS_DOMAIN = "com.microsoft"


def quantize_rows_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (..., out, in) float -> (uint8 q + 128 of the same shape, float32 scales (..., out)):
    w ≈ (q - 128) · scale, symmetric per output row."""
    scale = np.abs(w).max(axis=-1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None]), -127, 127).astype(np.int16)
    return (q + 128).astype(np.uint8), scale


def moe_to_qmoe(model) -> int:  # noqa: ANN001 - an onnx.ModelProto, changed in place
    """Replace every com.microsoft.MoE node by an 8-bit QMoE node; returns how many."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    n = 0
    for i, node in enumerate(list(model.graph.node)):
        if node.op_type != "MoE" or node.domain != MS_DOMAIN:
            continue
        x, logits, w1, b1, w2, b2 = node.input[:6]
        if w1 not in inits or w2 not in inits:
            raise ValueError(f"MoE node {node.name}: expert weights are not constants")
        new_inputs = [x, logits]
        for w, b in ((w1, b1), (w2, b2)):
            q, s = quantize_rows_int8(numpy_helper.to_array(inits[w]).astype(np.float32))
            qn, sn = f"{w}_q8", f"{w}_q8_scale"
            model.graph.initializer.extend(
                [numpy_helper.from_array(q, qn), numpy_helper.from_array(s, sn)]
            )
            new_inputs += [qn, sn, b]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        q_node = helper.make_node(
            "QMoE", new_inputs, list(node.output), name=f"{node.name}_q8", domain=MS_DOMAIN,
            expert_weight_bits=8, **attrs,
        )  # fmt: skip
        model.graph.node.remove(node)
        model.graph.node.insert(i, q_node)
        n += 1
    used = {name for nd in model.graph.node for name in nd.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)  # the float expert weights
    return n


def quantize_graph(src: str | Path, dst: str | Path) -> dict:
    """Write the int8 copy of graph `src` to `dst`; returns what was quantised."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    n_moe = moe_to_qmoe(model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs each skipped tensor, and a hint per call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mid = Path(tmp) / "moe_q8.onnx"
            onnx.save(model, str(mid))
            quantize_dynamic(
                str(mid),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        root.setLevel(level)
    ops = [nd.op_type for nd in onnx.load(str(dst)).graph.node]
    return {
        "qmoe_nodes": n_moe,
        "int8_matmuls": sum(o in ("MatMulInteger", "DynamicQuantizeMatMul") for o in ops),
    }


def quantize_graphs(spec: dict, out_dir: Path) -> dict:
    """int8 copies of a bench graph spec's full (and streaming) graph -> a new spec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    new = dict(spec, name=f"{spec['name']}_int8", moe_op=f"{spec['moe_op']}+int8")
    new["full"] = str(out_dir / "encoder.onnx")
    new["quantized"] = quantize_graph(spec["full"], new["full"])
    if "stream" in spec:
        new["stream"] = str(out_dir / "encoder_stream.onnx")
        quantize_graph(spec["stream"], new["stream"])
    return new
