"""MoE layers as onnxruntime's fused `com.microsoft.MoE` contrib operator in exported graphs.

The operator (onnxruntime >= 1.20, CPU kernel) takes the tokens x (N, D) and the router
logits (N, E) and computes, per token,

    p      = softmax(logits)                       over all E experts
    top    = the k largest p                       (ties in any order)
    g_j    = p_j / sum(p over top)                 normalize_routing_weights = 1
    y      = sum_j g_j * (act(x W1_j^T + b1_j) W2_j^T + b2_j)

with fc1 weights (E, H, D) and fc2 weights (E, D, H) (the nn.Linear layout: out x in), and
act "silu" or "relu". That is exactly `MoEFeedForward` with groups = 1 (softmax over all
experts, top-k, gates renormalised to sum 1; for k = 1 the gate is exactly 1), whose stacked
expert tensors are w_1 (E, D, H) and w_2 (E, H, D): the export transposes them once.
Checked numerically against eager by tests/test_onnx_moe.py; the semantics were read from
onnxruntime's CPU kernel and confirmed on the installed onnxruntime (`fused_moe_supported`).

Not expressible with this operator (use the portable graph, `--moe-op portable`):
groups > 1 (softmax and top-k within each group), activations other than swish / relu.

One node per MoE layer replaces the portable graph's E NonZero/gather/scatter chains. The node
is emitted by tracing an autograd.Function whose `symbolic` writes the contrib op; its eager
forward (run only while tracing, for the traced values) computes the operator's definition.

Example:
    >>> with fused_moe_layers(model):          # every MoE layer traces as one MoE node
    ...     trace_to_onnx(wrapper, args, "enc.onnx", ...)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ume.model.moe import MoEFeedForward

MOE_OPS = ("fused", "portable")
MS_DOMAIN = "com.microsoft"


def fused_activation(layer: MoEFeedForward) -> str | None:
    """The operator's activation_type for this layer's activation, None if it has none."""
    if isinstance(layer.act, nn.SiLU):
        return "silu"
    if isinstance(layer.act, nn.ReLU):
        return "relu"
    return None


def why_not_fused(layer: MoEFeedForward) -> str | None:
    """None when `layer` maps onto com.microsoft.MoE exactly, else the reason it does not."""
    if layer.groups != 1:
        return (
            f"groups={layer.groups}: the fused operator routes over all experts at once, "
            "not top-k within each group"
        )
    if fused_activation(layer) is None:
        return f"activation {type(layer.act).__name__} has no fused equivalent"
    return None


class _FusedMoE(torch.autograd.Function):
    """x (N, D), logits (N, E), w_1t (E, H, D), b_1 (E, H), w_2t (E, D, H), b_2 (E, D)
    -> (N, D); traced as one com.microsoft::MoE node. The eager forward computes the operator's
    definition (the traced values; the graph itself holds only the node)."""

    @staticmethod
    def forward(ctx, x, logits, w_1t, b_1, w_2t, b_2, k, act):  # noqa: ANN001, ANN205
        gates, top = logits.float().softmax(-1).topk(k, dim=-1)  # (N, k)
        gates = gates / gates.sum(-1, keepdim=True)
        out = torch.zeros_like(x, dtype=torch.float32)
        for e in range(w_1t.size(0)):
            tok, slot = torch.where(top == e)
            h = F.linear(x[tok], w_1t[e], b_1[e])  # (n_e, H)
            h = F.silu(h) if act == "silu" else F.relu(h)
            y = F.linear(h, w_2t[e], b_2[e]).float()  # (n_e, D)
            out.index_add_(0, tok, y * gates[tok, slot].unsqueeze(1))
        return out.to(x.dtype)

    @staticmethod
    def symbolic(g, x, logits, w_1t, b_1, w_2t, b_2, k, act):  # noqa: ANN001, ANN205
        out = g.op(
            f"{MS_DOMAIN}::MoE",
            x,
            logits,
            w_1t,
            b_1,
            w_2t,
            b_2,
            k_i=k,
            activation_type_s=act,
            normalize_routing_weights_i=1,
        )
        out.setType(x.type())  # same shape and dtype as x (the exporter cannot infer it)
        return out


class FusedMoEExport(nn.Module):
    """Stands in for an MoEFeedForward while tracing: forward(x (B, T, D), valid (B, T) | None)
    -> (B, T, D), padding frames zeroed as the portable graph does."""

    def __init__(self, layer: MoEFeedForward) -> None:
        super().__init__()
        reason = why_not_fused(layer)
        if reason is not None:
            raise ValueError(f"cannot export this MoE layer as com.microsoft.MoE: {reason}")
        self.layer = layer

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        m = self.layer
        x_flat = x.reshape(-1, shape[-1])  # (N, D)
        logits = F.linear(x_flat, m.router.weight)  # (N, E), as MoEFeedForward.route
        p = m.experts
        out = _FusedMoE.apply(
            x_flat,
            logits,
            p.w_1.transpose(1, 2),  # (E, H, D)
            p.b_1,  # (E, H)
            p.w_2.transpose(1, 2),  # (E, D, H)
            p.b_2,  # (E, D)
            m.top_k,
            fused_activation(m),
        )
        if valid is not None:
            out = out * valid.reshape(-1, 1).to(out.dtype)
        return out.view(shape)


@contextlib.contextmanager
def fused_moe_layers(model: nn.Module) -> Iterator[int]:
    """Inside the block every MoEFeedForward of `model` is replaced by its FusedMoEExport
    (restored after, also on error); yields the number replaced. Raises ValueError, before
    changing anything, if a layer cannot be fused."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, MoEFeedForward):
                swaps.append((parent, name, child))
    wrapped = [FusedMoEExport(child) for _, _, child in swaps]  # raises before any swap
    try:
        for (parent, name, _), w in zip(swaps, wrapped):
            setattr(parent, name, w)
        yield len(swaps)
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)


def model_why_not_fused(model: nn.Module) -> str | None:
    """The first MoE layer's reason it cannot be fused (with its name), or None."""
    for name, m in model.named_modules():
        if isinstance(m, MoEFeedForward):
            reason = why_not_fused(m)
            if reason is not None:
                return f"{name}: {reason}"
    return None


@functools.cache
def fused_moe_supported() -> bool:
    """Whether the installed onnxruntime runs com.microsoft.MoE on the CPU with the semantics
    above: a 2-expert top-1 layer whose router picks expert 1 for the first token and expert
    0 for the second, relu experts with known outputs."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return False
    d, h, e = 2, 2, 2
    w1 = np.stack([np.eye(h, d), 2 * np.eye(h, d)]).astype(np.float32)  # (E, H, D)
    w2 = np.stack([np.eye(d, h), np.eye(d, h)]).astype(np.float32)  # (E, D, H)
    b1 = np.zeros((e, h), np.float32)
    b2 = np.array([[0, 0], [1, 1]], np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))]
    inits.append(numpy_helper.from_array(b2, "b2"))
    node = helper.make_node(
        "MoE",
        ["x", "r", "w1", "b1", "w2", "b2"],
        ["y"],
        domain=MS_DOMAIN,
        k=1,
        activation_type="relu",
        normalize_routing_weights=1,
    )
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "probe",
        [
            helper.make_tensor_value_info("x", f32, [2, d]),
            helper.make_tensor_value_info("r", f32, [2, e]),
        ],
        [helper.make_tensor_value_info("y", f32, [2, d])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)]
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(
            helper.make_model(graph, opset_imports=opsets).SerializeToString(),
            so,
            providers=["CPUExecutionProvider"],
        )
        x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
        r = np.array([[0.0, 5.0], [5.0, 0.0]], np.float32)
        y = sess.run(None, {"x": x, "r": r})[0]
    except Exception:  # noqa: BLE001 - any failure means "not supported here"
        return False
    want = np.array([[3.0, 5.0], [3.0, 4.0]], np.float32)  # 2x+1 (expert 1), x (expert 0)
    return bool(np.allclose(y, want, atol=1e-5))
