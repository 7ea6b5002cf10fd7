"""How an `MoEFeedForward` layer moves its token-slots through its experts (the dispatch paths),
chosen per layer by its `DispatchOptions` (`layer.dispatch_options`), never by globals.

Paths (the routing, the per-expert maps and the gates are the same in all of them):
    sorted loop   slots sorted by expert, one addmm pair per expert on its contiguous block,
                  one index_add of the gated outputs (path "loop", the default). Without an
                  autograd graph it runs into preallocated buffers (`dispatch_fast`,
                  bit-identical); with a graph through `expert_ffn`'s hand-written backward
                  (`fused_backward`, else autograd ops on unbind views, the reference).
    bias-filled   no graph, short inputs (`dispatch_fast_small`, the batch-1 default): the
                  same addmm pairs, accumulating in place into (k·N, H) and (k·N, D) buffers
                  pre-filled with each slot's expert biases (no per-call bias copy, fewer
                  operator calls): bit-identical to the loop. Taken while the (k·N, H) buffer
                  is at most `small_max_bytes`; above it the loop's reused (max count, H)
                  buffer is as fast and smaller (docs/PERFORMANCE.md).
    padded bmm    no graph, >= 2 threads, short inputs (`dispatch_fast_padded`): the slots in a
                  zero-padded (E, C_max, D) buffer, every expert in one baddbmm pair, which
                  splits over threads by expert (batch-1 decoding: ~10 rows per expert). Taken
                  only when the BUSIEST expert has <= `padded_max_rows` rows and the padded
                  buffer is at most `padded_max_waste` x the real rows: with a skewed load
                  (a zero router sends every token to the same k experts) the loop runs,
                  because the padded buffer would be sized by the busiest expert.
    bmm           the padded buffer with autograd ops (path "bmm", for comparison).
    grouped       the two expert GEMMs as `torch._grouped_mm` calls over the expert-sorted
                  slots, graph (backward: grouped GEMMs too) or not (ume/model/grouped_ffn.py).
                  Where the operator does not qualify (torch without it, D or H rows not
                  16-byte multiples, CUDA without the native bf16 kernel) the loop runs.
    auto          per shape, the faster of "loop" and "grouped" as measured on the first call
                  of its (E, D, H, dtype, device, slots bucket, graph) key, then remembered for
                  the process (ume/model/dispatch_tuner.py: `chosen_paths()` shows the table,
                  `clear_chosen_paths()` empties it).
    masked/dense  export-friendly, no data-dependent Python values (`forward_static`); tracing
                  (ONNX export) always takes `export_path`.

Example:
    >>> layer.dispatch_options = DispatchOptions(padded_max_rows=0)  # this layer: never padded
    >>> with dispatch_options(model, fused_backward=False):          # every MoE layer, restored
    ...     model(feats, lens, ys, ys_lens)["loss"].backward()
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ume.errors import UmeError
from ume.model.dispatch_tuner import ShapeKey, lookup, measure, slots_bucket
from ume.model.expert_ffn import expert_ffn
from ume.model.grouped_ffn import grouped_expert_ffn, grouped_mm_qualifies
from ume.model.router import capacity_keep

# the layer these functions serve is an ume.model.moe.MoEFeedForward (which imports this
# module; annotated as nn.Module to keep the import one-way)
MoELayer = nn.Module

STATIC_PATHS = ("masked", "dense")
EAGER_PATHS = ("loop", "bmm", "grouped", "auto")
PATHS = (*EAGER_PATHS, *STATIC_PATHS)


@dataclass
class DispatchOptions:
    """Per-layer dispatch choice.

    path:             "loop" (sorted blocks; fast no-graph and padded variants), "bmm",
                      "grouped" (torch._grouped_mm; the loop where it does not qualify),
                      "auto" (loop or grouped per shape, by measurement), "masked" or "dense"
                      (export-friendly, also usable eagerly)
    export_path:      what tracing (ONNX export) uses: "masked" or "dense"
    padded_max_rows:  no-graph with >= 2 threads: the padded bmm when the busiest expert has
                      at most this many rows (0 = never). At 1 thread the padding only costs.
    padded_max_waste: ... and E x C_max <= this x the k·N real rows (skewed load -> loop)
    small_max_bytes:  no-graph: the bias-filled path while its (k·N, H) hidden buffer is at
                      most this many bytes (0 = never); the default is measured
                      (`ume bench moe --small-crossover`, docs/PERFORMANCE.md)
    fused_backward:   graph path through expert_ffn's backward (False: autograd reference)
    """

    path: str = "loop"
    export_path: str = "masked"
    padded_max_rows: int = 32
    padded_max_waste: float = 2.0
    small_max_bytes: int = 2**20
    fused_backward: bool = True

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise UmeError(f"MoE dispatch path {self.path!r}: use one of {PATHS}")
        if self.export_path not in STATIC_PATHS:
            raise UmeError(f"MoE export_path {self.export_path!r}: use one of {STATIC_PATHS}")
        if self.padded_max_rows < 0 or self.padded_max_waste < 1.0:
            raise UmeError("padded_max_rows must be >= 0 and padded_max_waste >= 1")
        if self.small_max_bytes < 0:
            raise UmeError(f"small_max_bytes {self.small_max_bytes}: must be >= 0 (0 = never)")


def moe_layers_of(model: nn.Module) -> list[nn.Module]:
    """Every module of `model` that carries dispatch options (MoEFeedForward layers)."""
    return [m for m in model.modules() if isinstance(getattr(m, "dispatch_options", None),
                                                     DispatchOptions)]  # fmt: skip


@contextlib.contextmanager
def dispatch_options(model: nn.Module, **changes: object) -> Iterator[None]:
    """Change fields of every MoE layer's DispatchOptions inside the block, then restore."""
    layers = moe_layers_of(model)
    saved = [m.dispatch_options for m in layers]
    try:
        for m in layers:
            m.dispatch_options = dataclasses.replace(m.dispatch_options, **changes)
        yield
    finally:
        for m, opts in zip(layers, saved):
            m.dispatch_options = opts


def set_dispatch_options(model: nn.Module, **changes: object) -> int:
    """Change fields of every MoE layer's DispatchOptions (no restore); returns the count."""
    layers = moe_layers_of(model)
    for m in layers:
        m.dispatch_options = dataclasses.replace(m.dispatch_options, **changes)
    return len(layers)


def tracing() -> bool:
    """True while torch.jit.trace or torch.onnx.export records the graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _act_name(layer: MoELayer) -> str:
    return "swish" if isinstance(layer.act, nn.SiLU) else "relu"


def _act_(layer: MoELayer, h: torch.Tensor) -> torch.Tensor:
    """Activation in place (same kernel, same values as the out-of-place module)."""
    if isinstance(layer.act, nn.SiLU):
        return F.silu(h, inplace=True)
    return F.relu(h, inplace=True)


def backward_follows(layer: MoELayer, xt: torch.Tensor) -> bool:
    """Whether this forward records a graph a backward will use: grad mode on, and the input
    or an expert weight requires grad."""
    if not torch.is_grad_enabled():
        return False
    return xt.requires_grad or any(p.requires_grad for p in layer.experts.parameters())


def needs_autograd(layer: MoELayer, xt: torch.Tensor) -> bool:
    """Whether this forward must build a graph (else the in-place, out= fast path runs).
    Autocast also takes the graph path: ops with out= are not autocast."""
    return torch.is_autocast_enabled(xt.device.type) or backward_follows(layer, xt)


def use_padded(opts: DispatchOptions, sizes: list[int], n_slots: int) -> bool:
    """The padded bmm for this load? By the busiest expert's real rows, not the average."""
    if opts.padded_max_rows <= 0 or torch.get_num_threads() < 2 or not sizes:
        return False
    c_max = max(sizes)
    return c_max <= opts.padded_max_rows and len(sizes) * c_max <= opts.padded_max_waste * n_slots


def use_small(opts: DispatchOptions, layer: MoELayer, xt: torch.Tensor, n_slots: int) -> bool:
    """The bias-filled path for this input? While its (k·N, H) hidden buffer is at most
    `opts.small_max_bytes` (N tokens, k slots per token, H the expert hidden size)."""
    return n_slots * layer.d_ff * xt.element_size() <= opts.small_max_bytes


def dispatch_sorted(
    layer: MoELayer,
    xt: torch.Tensor,
    slot_e: torch.Tensor,
    order: torch.Tensor,
    sorted_tok: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """xt (N, D), slots sorted by expert -> output (N, D) and the number of dropped slots.
    The layer's path, where "grouped" that does not qualify here runs "loop", and "auto"
    looks up (or first measures) the path for this shape (`tuned_path`)."""
    if xt.size(0) == 0:
        return xt.new_zeros(0, xt.size(1)), torch.zeros((), device=xt.device)
    args = (layer, xt, slot_e, order, sorted_tok, counts, gates)
    path = layer.dispatch_options.path
    if path in ("grouped", "auto") and not grouped_qualifies(layer, xt):
        path = "loop"
    if path == "auto":
        path = tuned_path(*args)
    return dispatch_path(path, *args)


def dispatch_path(
    path: str,
    layer: MoELayer,
    xt: torch.Tensor,
    slot_e: torch.Tensor,
    order: torch.Tensor,
    sorted_tok: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dispatch_sorted` through one named path ("loop", "bmm" or "grouped"; N > 0 tokens).
    A capacity limit drops the same slots in every path (`capacity_keep`)."""
    n, k = xt.size(0), layer.slots_per_token
    opts = layer.dispatch_options
    cap = layer.capacity(n)
    dropped = torch.zeros((), device=xt.device)
    graph = needs_autograd(layer, xt)
    if cap >= k * n and path == "loop" and not graph:
        sizes = counts.tolist()
        if use_padded(opts, sizes, k * n):
            return dispatch_fast_padded(layer, xt, slot_e, order, sorted_tok, sizes, gates), dropped
        if use_small(opts, layer, xt, k * n):
            return dispatch_fast_small(layer, xt, slot_e, order, sorted_tok, sizes, gates), dropped
        return dispatch_fast(layer, xt, order, sorted_tok, sizes, gates), dropped
    sorted_g = gates.t().reshape(-1).index_select(0, order)
    sorted_e = slot_e.index_select(0, order) if path == "bmm" or cap < k * n else None
    kept_counts = counts
    if cap < k * n:
        keep = capacity_keep(sorted_e, counts, cap)
        dropped = (~keep).sum().float()
        sorted_e, sorted_tok, sorted_g = sorted_e[keep], sorted_tok[keep], sorted_g[keep]
        kept_counts = counts.clamp(max=cap)
    if path == "bmm":
        return dispatch_bmm(layer, xt, sorted_e, sorted_tok, sorted_g, kept_counts), dropped
    if path == "grouped":
        return dispatch_grouped(layer, xt, sorted_tok, sorted_g, kept_counts, graph), dropped
    return dispatch_loop(layer, xt, sorted_tok, sorted_g, kept_counts), dropped


def compute_dtype(xt: torch.Tensor) -> torch.dtype:
    """The dtype the expert GEMMs run in: autocast's where autocast is on, else the input's."""
    if torch.is_autocast_enabled(xt.device.type):
        return torch.get_autocast_dtype(xt.device.type)
    return xt.dtype


def grouped_qualifies(layer: MoELayer, xt: torch.Tensor) -> bool:
    """Whether the grouped path may run this layer on this input (`grouped_mm_qualifies`:
    operator present and running, 16-byte aligned D and H rows, CUDA native kernel)."""
    p = layer.experts
    dtype = compute_dtype(xt)
    if dtype != p.w_1.dtype and not torch.is_autocast_enabled(xt.device.type):
        return False  # mixed input / weight dtypes: the loop's autograd reference handles them
    weights = (p.w_1, p.w_2) if dtype == p.w_1.dtype else ()  # autocast copies: fresh, aligned
    return grouped_mm_qualifies(xt.device, dtype, layer.d_model, layer.d_ff, weights)


def dispatch_grouped(
    layer: MoELayer,
    xt: torch.Tensor,
    tok: torch.Tensor,
    gate: torch.Tensor,
    counts: torch.Tensor,
    graph: bool,
) -> torch.Tensor:
    """The two expert GEMMs as `torch._grouped_mm` calls over the expert-sorted slots
    (`grouped_expert_ffn`), graph or not, then the gated sum into the N tokens -> (N, D).
    Under autocast the GEMMs run in autocast's dtype (inputs and weights cast, differentiably)."""
    p = layer.experts
    xs = xt.index_select(0, tok)  # (S, D), grouped by expert
    w_1, b_1, w_2, b_2 = p.w_1, p.b_1, p.w_2, p.b_2
    autocast = torch.is_autocast_enabled(xt.device.type)
    if autocast:
        dt = compute_dtype(xt)
        xs, w_1, b_1, w_2, b_2 = (t.to(dt) for t in (xs, w_1, b_1, w_2, b_2))
    drop = layer.dropout.p if layer.training else 0.0
    with torch.autocast(xt.device.type, enabled=False) if autocast else contextlib.nullcontext():
        ys = grouped_expert_ffn(xs, counts, w_1, b_1, w_2, b_2, _act_name(layer), drop, graph)
    return combine(xt, ys, tok, gate)


def shape_key(layer: MoELayer, xt: torch.Tensor, graph: bool) -> ShapeKey:
    """The tuner's key for this layer and input (dispatch_tuner.ShapeKey)."""
    return ShapeKey(
        experts=layer.num_experts,
        d_model=layer.d_model,
        d_ff=layer.d_ff,
        dtype=str(compute_dtype(xt)).removeprefix("torch."),
        device=str(xt.device),
        slots_bucket=slots_bucket(layer.slots_per_token * xt.size(0)),
        graph=graph,
    )


TUNED_CANDIDATES = ("loop", "grouped")  # the first is the default a tie keeps


def tuned_path(
    layer: MoELayer,
    xt: torch.Tensor,
    slot_e: torch.Tensor,
    order: torch.Tensor,
    sorted_tok: torch.Tensor,
    counts: torch.Tensor,
    gates: torch.Tensor,
) -> str:
    """The "auto" path for this call: the table's winner for its shape key, measured now on
    this layer's weights and input if the key is new. No-graph calls time the forward (the loop
    candidate with its bias-filled and padded variants); graph calls time forward + backward
    to the input and the expert weights (torch.autograd.grad: nothing accumulates in .grad).
    The random-number state is restored after the timing, so dropout masks stay reproducible."""
    graph = backward_follows(layer, xt)  # not needs_autograd: autocast alone has no backward
    key = shape_key(layer, xt, graph)
    choice = lookup(key)
    if choice is not None:
        return choice.path
    gates = gates.detach()

    def candidate(path: str) -> Callable[[], None]:
        def run() -> None:
            if not graph:
                dispatch_path(path, layer, xt, slot_e, order, sorted_tok, counts, gates)
                return
            x_in = xt.detach().requires_grad_(xt.requires_grad)
            out = dispatch_path(path, layer, x_in, slot_e, order, sorted_tok, counts, gates)[0]
            inputs = [t for t in (x_in, *layer.experts.parameters()) if t.requires_grad]
            if inputs:  # contiguous ones: the layout a real loss gradient has
                torch.autograd.grad(out, inputs, grad_outputs=torch.ones_like(out))

        return run

    devices = [xt.device] if xt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=xt.device.type):
        fns = {path: candidate(path) for path in TUNED_CANDIDATES}
        return measure(key, fns, xt.device).path


def dispatch_fast(
    layer: MoELayer,
    xt: torch.Tensor,
    order: torch.Tensor,
    tok: torch.Tensor,
    sizes: list[int],
    gates: torch.Tensor,
) -> torch.Tensor:
    """No-graph dispatch (inference; also training forwards under no_grad): the same addmm
    pair per expert, but into preallocated buffers: one (max count, H) hidden buffer reused by
    every expert (in-place activation, cache-resident), second addmm written straight into
    its rows of the output, gates applied in place, one index_add. The products and the
    summation order are those of the graph path: bit-identical output."""
    n = xt.size(0)
    p = layer.experts
    xs = xt.index_select(0, tok)  # (k·N, D), grouped by expert
    drop = layer.dropout.p if layer.training else 0.0
    w_1, b_1, w_2, b_2 = (_expert_views(t, sizes) for t in (p.w_1, p.b_1, p.w_2, p.b_2))
    ys = torch.empty_like(xs)
    hbuf = xt.new_empty(max(sizes), layer.d_ff)
    for ex, (c, x_e, y_e) in enumerate(zip(sizes, xs.split(sizes), ys.split(sizes))):
        if c == 0:
            continue
        h = hbuf[:c]
        torch.addmm(b_1[ex], x_e, w_1[ex], out=h)
        _act_(layer, h)
        if drop > 0:
            F.dropout(h, drop, True, inplace=True)
        torch.addmm(b_2[ex], h, w_2[ex], out=y_e)
    return gated_sum(layer.slots_per_token, ys, tok, order, gates, n)


def dispatch_fast_small(
    layer: MoELayer,
    xt: torch.Tensor,
    slot_e: torch.Tensor,
    order: torch.Tensor,
    tok: torch.Tensor,
    sizes: list[int],
    gates: torch.Tensor,
) -> torch.Tensor:
    """No-graph dispatch for short inputs: `dispatch_fast`'s addmm pairs (and dropout) with fewer
    operator calls around them. Two gathers pre-fill every slot's hidden row (k·N, H) and
    output row (k·N, D) with its expert's biases, so each GEMM accumulates in place (addmm_,
    beta 1: the GEMM that addmm(out=) runs after copying the bias, without the copy), and the
    per-expert views come from one split per tensor instead of Python slicing per block.
    Same products, same summation order: bit-identical to `dispatch_fast`."""
    n = xt.size(0)
    p = layer.experts
    drop = layer.dropout.p if layer.training else 0.0
    sorted_e = slot_e.index_select(0, order)  # (k·N,) expert of each sorted slot
    xs = xt.index_select(0, tok)  # (k·N, D), grouped by expert
    h = p.b_1.index_select(0, sorted_e)  # (k·N, H) = b_1 of the slot's expert
    ys = p.b_2.index_select(0, sorted_e)  # (k·N, D) = b_2 of the slot's expert
    w_1, w_2 = _expert_views(p.w_1, sizes), _expert_views(p.w_2, sizes)
    x_b, h_b, y_b = (torch.split_with_sizes(t, sizes) for t in (xs, h, ys))
    for ex, c in enumerate(sizes):
        if c:  # expert by expert, so its hidden rows are still in cache for the second GEMM
            h_e = h_b[ex].addmm_(x_b[ex], w_1[ex])
            _act_(layer, h_e)
            if drop > 0:  # same masks, drawn in the same order, as dispatch_fast
                F.dropout(h_e, drop, True, inplace=True)
            y_b[ex].addmm_(h_e, w_2[ex])
    return gated_sum(layer.slots_per_token, ys, tok, order, gates, n)


def _expert_views(t: torch.Tensor, sizes: list[int]) -> list | tuple:
    """Per-expert views of a stacked (E, ...) tensor: one unbind when most experts have rows,
    else only the used experts' views (a skewed load, e.g. a zero router: 2 of 8 used)."""
    used = sum(1 for c in sizes if c)
    if 2 * used > len(sizes):
        return t.unbind(0)
    return [t[ex] if c else None for ex, c in enumerate(sizes)]


def gated_sum(
    slots_per_token: int,
    ys: torch.Tensor,
    tok: torch.Tensor,
    order: torch.Tensor,
    gates: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """No-graph combine: expert outputs ys (S·N, D) in sorted slot order (S = slots_per_token
    = k·G), scaled in place by their gates and summed into their N tokens -> (N, D)."""
    if slots_per_token == 1:  # the one gate's value is exactly 1: no scaling
        return torch.zeros_like(ys).index_add_(0, tok, ys)
    sorted_g = gates.t().reshape(-1).index_select(0, order).unsqueeze(1)
    if ys.dtype == torch.float32:  # same products and summation order as combine()
        return ys.new_zeros(n, ys.size(1)).index_add_(0, tok, ys.mul_(sorted_g))
    contrib = ys.float() * sorted_g  # reduced precision: accumulate in float32
    return contrib.new_zeros(n, ys.size(1)).index_add_(0, tok, contrib).to(ys.dtype)


def dispatch_fast_padded(
    layer: MoELayer,
    xt: torch.Tensor,
    slot_e: torch.Tensor,
    order: torch.Tensor,
    tok: torch.Tensor,
    sizes: list[int],
    gates: torch.Tensor,
) -> torch.Tensor:
    """No-graph dispatch for short inputs (batch-1 decoding, streaming chunks): the slots are
    copied into a zero-padded (E, C_max, D) buffer and every expert runs in one baddbmm pair.
    With a few rows per expert, E separate addmm calls are each too small to use the core (or
    a second thread) well, while one bmm spreads over experts; the padding costs FLOPs on
    every expert below C_max. Same maps and gates as the loop; equal to it within float
    rounding (bmm may sum in another order)."""
    n, d = xt.shape
    e = layer.num_experts
    sorted_e = slot_e.index_select(0, order)  # (k·N,)
    c_max = max(sizes)
    counts = torch.tensor(sizes, device=xt.device)
    flat = padded_index(sorted_e, counts, c_max)
    p = layer.experts
    buf = xt.new_zeros(e * c_max, d).index_copy_(0, flat, xt.index_select(0, tok))
    h = torch.baddbmm(p.b_1.unsqueeze(1), buf.view(e, c_max, d), p.w_1)  # (E, C, H)
    _act_(layer, h)
    if layer.training and layer.dropout.p > 0:
        F.dropout(h, layer.dropout.p, True, inplace=True)
    y = torch.baddbmm(p.b_2.unsqueeze(1), h, p.w_2).view(e * c_max, d)
    ys = y.index_select(0, flat)  # (k·N, D) in sorted slot order
    return gated_sum(layer.slots_per_token, ys, tok, order, gates, n)


def padded_index(sorted_e: torch.Tensor, counts: torch.Tensor, c_max: int) -> torch.Tensor:
    """Row of each expert-sorted slot in a zero-padded (E·C_max, ·) buffer."""
    starts = counts.cumsum(0) - counts
    pos = torch.arange(sorted_e.numel(), device=sorted_e.device)
    pos = pos - starts.index_select(0, sorted_e)
    return sorted_e * c_max + pos


def forward_static(
    layer: MoELayer, x_flat: torch.Tensor, valid: torch.Tensor | None, path: str
) -> torch.Tensor:
    """Export-friendly dispatch: no `.tolist()`, nothing a trace would freeze. Padding frames
    are routed too (their output is zeroed), so shapes follow the input only.
        "masked": per expert, its rows (torch.where over the top-k choices), its FFN, a gated
                  index_add: the same FLOPs as "loop"; dynamic shapes (NonZero)
        "dense":  every expert on every frame (E/k times the FLOPs), then a gather of each
                  frame's top-k outputs: static shapes
    Both give what the sorted dispatch gives: the same per-expert affine maps and gates, and
    for k <= 2 the same sum (two-term float addition is commutative)."""
    n, d = x_flat.shape
    k, e = layer.slots_per_token, layer.num_experts
    logits, top_e, gates = layer.route(x_flat)
    p = layer.experts
    acc_dtype = torch.float32
    if path == "dense":
        xe = x_flat.unsqueeze(0).expand(e, n, d)
        h = layer.dropout(layer.act(torch.baddbmm(p.b_1.unsqueeze(1), xe, p.w_1)))  # (E, N, H)
        y = torch.baddbmm(p.b_2.unsqueeze(1), h, p.w_2).transpose(0, 1)  # (N, E, D)
        sel = y.gather(1, top_e.unsqueeze(-1).expand(n, k, d)).to(acc_dtype)  # (N, k, D)
        out = sel[:, 0] * gates[:, :1]
        for j in range(1, k):
            out = out + sel[:, j] * gates[:, j : j + 1]
    elif path == "masked":
        out = x_flat.new_zeros(n, d, dtype=acc_dtype)
        for ex in range(e):
            tok, slot = torch.where(top_e == ex)
            h = layer.dropout(layer.act(torch.addmm(p.b_1[ex], x_flat[tok], p.w_1[ex])))
            y = torch.addmm(p.b_2[ex], h, p.w_2[ex]).to(acc_dtype)
            out = out.index_add(0, tok, y * gates[tok, slot].unsqueeze(1))
    else:
        raise UmeError(f"unknown MoE dispatch {path!r}; use one of {PATHS}")
    out = out.to(x_flat.dtype)
    if valid is not None:
        out = out * valid.reshape(n, 1).to(out.dtype)  # padding frames output 0
    if not tracing():  # statistics as the sorted dispatch records them (valid frames)
        vmask = valid.reshape(n) if valid is not None else None
        lg = logits if vmask is None else logits[vmask]
        te = top_e if vmask is None else top_e[vmask]
        counts = torch.bincount(te.reshape(-1), minlength=e)
        layer._record(lg, counts, torch.zeros((), device=x_flat.device), lg.size(0))
    return out


def dispatch_loop(
    layer: MoELayer,
    xt: torch.Tensor,
    tok: torch.Tensor,
    gate: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Graph path: expert blocks through expert_ffn (or autograd ops: autocast, reference)."""
    xs = xt.index_select(0, tok)  # (S, D), grouped by expert
    p = layer.experts
    sizes = counts.tolist()
    fused = layer.dispatch_options.fused_backward and xs.dtype == p.w_1.dtype
    if fused and not torch.is_autocast_enabled(xt.device.type):
        drop = layer.dropout.p if layer.training else 0.0
        y = expert_ffn(xs, sizes, p.w_1, p.b_1, p.w_2, p.b_2, _act_name(layer), drop)
        return combine(xt, y, tok, gate)
    # autocast (its casts do not apply to out= calls): the same maps as autograd ops
    w_1, b_1, w_2, b_2 = p.w_1.unbind(0), p.b_1.unbind(0), p.w_2.unbind(0), p.b_2.unbind(0)
    ys = []
    for ex, chunk in enumerate(xs.split(sizes)):
        if chunk.size(0) > 0:
            h = layer.dropout(layer.act(torch.addmm(b_1[ex], chunk, w_1[ex])))
            ys.append(torch.addmm(b_2[ex], h, w_2[ex]))
    y = torch.cat(ys) if ys else xs.new_zeros(0, xt.size(1))
    return combine(xt, y, tok, gate)


def dispatch_bmm(
    layer: MoELayer,
    xt: torch.Tensor,
    e_idx: torch.Tensor,
    tok: torch.Tensor,
    gate: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Graph path with the padded (E, C_max, D) buffer and autograd ops."""
    e, d = layer.num_experts, xt.size(1)
    c_max = int(counts.max()) if counts.numel() else 0
    flat = padded_index(e_idx, counts, c_max)
    buf = xt.new_zeros(e * c_max, d).index_copy(0, flat, xt.index_select(0, tok))
    p = layer.experts
    h = torch.baddbmm(p.b_1.unsqueeze(1), buf.view(e, c_max, d), p.w_1)
    h = layer.dropout(layer.act(h))
    y = torch.baddbmm(p.b_2.unsqueeze(1), h, p.w_2).view(e * c_max, d)
    return combine(xt, y.index_select(0, flat), tok, gate)


def combine(
    xt: torch.Tensor, y: torch.Tensor, tok: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """Sum gate-weighted slot outputs y (S, D) into their tokens -> (N, D)."""
    if y.dtype == torch.float32:
        contrib = y * gate.unsqueeze(1)
        return y.new_zeros(xt.size(0), y.size(1)).index_add(0, tok, contrib)
    # reduced precision (autocast): accumulate the k contributions in float32
    contrib = y.float() * gate.unsqueeze(1)
    out = contrib.new_zeros(xt.size(0), y.size(1)).index_add(0, tok, contrib)
    return out.to(y.dtype)
