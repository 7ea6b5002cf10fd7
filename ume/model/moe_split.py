"""MoE for any feed-forward block, split at its two projections (used by `ume.upcycle`).

A feed-forward block computes `out(elementwise(in(x)))`, where `elementwise` is whatever the
model's own code does between the two Linear layers: an activation, a dropout, a GLU product
`act(gate(x)) * up(x)`. The block may be a submodule (`Wav2Vec2FeedForward`, an
`nn.Sequential`, a SwiGLU MLP) or inline in a layer's forward (Whisper: `self.fc1`,
`self.activation_fn`, `self.fc2` are attributes of the encoder layer). Replacing the block by
one module would need to know that forward code; replacing its two projections does not:

    in  (Linear D -> H)  ->  MoEEntry   routes each token to its S = k·G experts and returns
                                       their pre-activations side by side, (..., S·H/G) =
                                       (..., k·H): each expert holds H/G hidden units
    model's own elementwise ops         run unchanged on (..., k·H) (elementwise, so per expert)
    out (Linear H -> D)  ->  MoEExit    applies each slot's expert down-projection to its H/G
                                       columns and sums the S results weighted by the gates

so the layer's forward, activation and dropout placement stay exactly as written. A gated
block has two entries (gate and up projection) sharing one routing decision: the entry that
owns the router routes, the other reuses the routing of the same input. With E copies of the
dense weights the gates sum to 1 and the output equals the dense block's (`ume.upcycle`
verifies it). Requirement: between `in` and `out` the model does only elementwise work on the
hidden vector (true for every FFN we know); anything else fails the verification.

Routing is `MoEFeedForward`'s, by the same `Router` (ume/model/router.py: float32 logits,
jitter and router noise in training, G groups with a top-k each, gates renormalised per group,
top-1 gate of value 1 with gradient ∇p, balance and z-loss); with groups G > 1 the experts of
group g are copies of the g-th 1/G slice of the hidden units and carry b_out/G (as
`expert_tensors_from_dense`). In training with capacity_factor > 0 each expert takes at most
ceil(cf·S·N/E) token-slots (first choices first); a dropped slot contributes nothing (its
columns of the entry's output are 0 and the exit skips them). Every token is routed (the block
does not see padding masks, so every output equals the dense block's). router_init "kmeans"
needs data and is refused here (ume.upcycle says what to do instead). After each forward the router's owner holds `aux_losses` ({"balance": α·E·Σ f_i·P_i,
"z_loss": β·mean(logsumexp²)} in training, {} in eval) and `last_load` (E,) token-slot
fractions. While a router's `valid` holds a bool mask of the input's token shape
(`ume.valid_frames`), padding tokens are still routed but left out of both: a batch padded to
its longest utterance does not push the balance loss towards balancing padding.

Example:
    >>> fc1, fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
    >>> entry, exit_ = split_moe(fc1, fc2, num_experts=4, top_k=2)
    >>> exit_(F.gelu(entry(torch.randn(3, 5, 8)))).shape
    torch.Size([3, 5, 8])
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ume.config import MoEConfig
from ume.errors import UmeError
from ume.model.router import Router, capacity_keep


class _Routing:
    """The routing decision of the last input, shared by a block's entries and its exit."""

    def __init__(self, slots: int) -> None:
        self.slots = slots  # S = k·G token-slots per token
        self.reset()

    def reset(self) -> None:
        self.x_ref: weakref.ref | None = None  # the routed input (identity, not address)
        self.n = 0
        self.rows: torch.Tensor | None = None  # (K,) kept slots by expert: row tok·S + choice
        self.sorted_tok: torch.Tensor | None = None  # (K,) token of each kept sorted slot
        self.sorted_gate: torch.Tensor | None = None  # (K,) gate of each kept sorted slot
        self.sizes: list[int] = []  # kept slots per expert
        self.dropped = 0  # slots over capacity

    def routed(self, x: torch.Tensor) -> bool:
        return self.x_ref is not None and self.x_ref() is x

    # per-forward state is not part of the model: copies start empty (deepcopy keeps the
    # sharing between a block's entries and exit through its memo)
    def __getstate__(self) -> dict:
        return {"slots": self.slots}

    def __setstate__(self, state: dict) -> None:
        self.slots = state["slots"]
        self.reset()


class MoERouter(Router):
    """The split MoE's `Router`, owned by a block's first entry: also sorts the slots by
    expert for the entries and the exit, applies the capacity, and records `aux_losses`,
    `last_load` (E,) and `last_dropped_frac` over the tokens `valid` marks (all when None)."""

    def __init__(self, d_model: int, cfg: MoEConfig, d_ff: int) -> None:
        if cfg.router_init == "kmeans":
            raise UmeError(
                "moe.router_init='kmeans' needs the layer's input data, which a split MoE "
                "layer does not get: use 'zeros' or 'normal' (k-means routers are built by "
                "`ume upcycle --router-init kmeans --router-data DIR` for ume experiment dirs)"
            )
        super().__init__(d_model, cfg, d_ff)
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.last_load: torch.Tensor | None = None
        self.last_dropped_frac = 0.0
        self.valid: torch.Tensor | None = None  # (...) bool, set by ume.valid_frames

    def __getstate__(self) -> dict:  # keep deepcopy working right after a training forward
        state = self.__dict__.copy()
        state["aux_losses"] = {}
        state["valid"] = None
        return state

    def _valid_rows(self, n: int) -> torch.Tensor | None:
        """(n,) bool of the tokens that count in the statistics, None if all do."""
        if self.valid is None:
            return None
        v = self.valid.reshape(-1)
        if v.numel() != n:
            raise UmeError(
                f"ume.valid_frames: a mask of shape {tuple(self.valid.shape)} "
                f"({v.numel()} tokens) for an MoE layer that routes {n} tokens; pass the mask "
                "with the submodule whose FFNs see that sequence (e.g. model.encoder)"
            )
        return v

    def route_into(self, xf: torch.Tensor, routing: _Routing) -> None:
        """Route xf (N, D); fills `routing` and records the auxiliary losses."""
        n, e, s = xf.size(0), self.num_experts, self.slots_per_token
        logits, experts, gates = self(xf)  # (N, E), (N, S), (N, S)
        # slots choice-major (slot j·N + tok), as MoEFeedForward: a stable sort by expert puts
        # an expert's first choices before its second ones, so the capacity drops the latter
        slot_e = experts.t().reshape(-1)  # (S·N,)
        order = slot_e.argsort(stable=True)
        counts = torch.bincount(slot_e, minlength=e)  # (E,)
        tok = order % max(n, 1)
        rows = tok * s + torch.div(order, max(n, 1), rounding_mode="floor")  # tok·S + choice
        gate = gates.t().reshape(-1).index_select(0, order)
        kept = counts
        cap = self.capacity(n)
        routing.dropped = 0
        if cap < s * n:
            keep = capacity_keep(slot_e.index_select(0, order), counts, cap)
            rows, tok, gate = rows[keep], tok[keep], gate[keep]
            kept = counts.clamp(max=cap)
            routing.dropped = s * n - int(keep.sum())
        routing.n = n
        routing.rows, routing.sorted_tok, routing.sorted_gate = rows, tok, gate
        routing.sizes = kept.tolist()
        self.last_dropped_frac = routing.dropped / max(s * n, 1)
        v = self._valid_rows(n)
        if v is not None:  # statistics over valid tokens only
            logits, experts = logits[v], experts[v]
            counts = torch.bincount(experts.reshape(-1), minlength=e)
        n_stat = logits.size(0)
        self.last_load = counts.detach().float() / max(s * n_stat, 1)
        self.aux_losses = self.losses(logits, counts, n_stat)


def _per_expert(
    xs: torch.Tensor, sizes: list[int], w: torch.Tensor, b: torch.Tensor | None
) -> torch.Tensor:
    """Rows xs (S, ·) grouped by expert (sizes (E,)) through expert e's affine map w[e] (·, ·)
    + b[e] -> (S, out); autograd ops, any activation happens outside. The stacked weights
    are split once (`unbind`), so the backward writes each expert's gradient once: O(E)
    (indexing w[e] per expert would add a full (E, ·, ·) gradient per expert: O(E²))."""
    ws = w.unbind(0)
    bs = b.unbind(0) if b is not None else None
    out = []
    for ex, chunk in enumerate(xs.split(sizes)):
        if chunk.size(0) == 0:
            continue
        out.append(torch.addmm(bs[ex], chunk, ws[ex]) if bs is not None else chunk @ ws[ex])
    if not out:
        return xs.new_zeros(0, w.size(-1))
    return torch.cat(out) if len(out) > 1 else out[0]


def _in_tensors(linear: nn.Linear, e: int, g: int) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Linear(D, H) -> stacked expert weight (E, D, H/G) and bias (E, H/G) | None: the E/G
    experts of group g copy hidden units g·H/G .. (g+1)·H/G."""
    h, d = linear.weight.shape
    per, hs = e // g, h // g
    w = linear.weight.detach().t().reshape(d, g, hs).permute(1, 0, 2)  # (G, D, H/G)
    b = linear.bias.detach().reshape(g, hs) if linear.bias is not None else None  # (G, H/G)
    return _param(w, per), _param(b, per) if b is not None else None


def _out_tensors(linear: nn.Linear, e: int, g: int) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Linear(H, D) -> stacked expert weight (E, H/G, D) and bias b/G (E, D) | None."""
    d, h = linear.weight.shape
    per, hs = e // g, h // g
    w = linear.weight.detach().t().reshape(g, hs, d)  # (G, H/G, D)
    b = linear.bias.detach() / g if linear.bias is not None else None
    b = b.unsqueeze(0).expand(g, d) if b is not None else None  # (G, D)
    return _param(w, per), _param(b, per) if b is not None else None


def _param(t: torch.Tensor, per: int) -> nn.Parameter:
    """(G, ...) -> (E, ...) parameter, group-major (E/G copies of each group's tensor)."""
    return nn.Parameter(t.repeat_interleave(per, dim=0).contiguous())


class MoEEntry(nn.Module):
    """Replaces an FFN's input projection Linear(D, H): x (..., D) -> (..., S·H/G), the
    selected experts' projections of each token side by side (0 for a slot over capacity).
    The router is a submodule of the block's first entry only; a gated block's second entry
    shares it (and the routing)."""

    def __init__(
        self, linear: nn.Linear, routing: _Routing, router: MoERouter, owns_router: bool
    ) -> None:
        super().__init__()
        self.routing = routing
        if owns_router:
            self.router = router
        else:
            self._shared_router = [router]  # a plain list: not registered twice
        e, g = router.num_experts, router.groups
        self.num_experts, self.in_features = e, linear.in_features
        self.hidden = linear.out_features // g  # one expert's hidden units
        self.weight, self.bias = _in_tensors(linear, e, g)  # (E, D, H/G), (E, H/G) | None

    def _router(self) -> MoERouter:
        return self.router if "router" in self._modules else self._shared_router[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., S·H/G)."""
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # (N, D)
        r = self.routing
        if not r.routed(x):  # the block's first projection routes; a gated second reuses
            self._router().route_into(xf, r)
            r.x_ref = weakref.ref(x)
        xs = xf.index_select(0, r.sorted_tok)  # (K, D), grouped by expert
        hs = _per_expert(xs, r.sizes, self.weight, self.bias)  # (K, H/G), sorted order
        h = hs.new_zeros(r.n * r.slots, self.hidden).index_copy(0, r.rows, hs)  # (S·N, H/G)
        return h.view(*shape[:-1], r.slots * self.hidden)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, in_features={self.in_features}, "
            f"hidden={self.hidden}, routes={'router' in self._modules}"
        )


class MoEExit(nn.Module):
    """Replaces an FFN's output projection Linear(H, D): h (..., S·H/G) from the model's
    elementwise ops on MoEEntry's output -> (..., D), gate-weighted sum over the S slots."""

    def __init__(self, linear: nn.Linear, routing: _Routing, num_experts: int, groups: int) -> None:
        super().__init__()
        self.routing = routing
        self.hidden, self.out_features = linear.in_features // groups, linear.out_features
        self.weight, self.bias = _out_tensors(linear, num_experts, groups)  # (E, H/G, D), (E, D)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.routing
        if r.rows is None or h.numel() != r.n * r.slots * self.hidden:
            raise RuntimeError(
                f"MoEExit got hidden {tuple(h.shape)}, but its entry routed {r.n} tokens to "
                f"{r.slots} slots of {self.hidden}: the code between the FFN's two projections "
                "must be elementwise"
            )
        hs = h.reshape(-1, self.hidden).index_select(0, r.rows)  # (K, H/G), sorted
        ys = _per_expert(hs, r.sizes, self.weight, self.bias)  # (K, D)
        r.x_ref = None  # the block's forward is done: the next input is routed afresh
        contrib = ys.float() * r.sorted_gate.unsqueeze(1)
        out = contrib.new_zeros(r.n, ys.size(1)).index_add(0, r.sorted_tok, contrib)
        return out.to(ys.dtype).view(*h.shape[:-1], self.out_features)


def split_moe(
    fc_in: nn.Linear,
    fc_out: nn.Linear,
    num_experts: int,
    top_k: int,
    fc_up: nn.Linear | None = None,
    moe_cfg: MoEConfig | None = None,
) -> tuple[nn.Module, ...]:
    """(entry, exit) for in/out projections, or (entry, up_entry, exit) for a gated block
    whose activated projection is fc_in and linear one fc_up. The experts are E copies of
    the dense projections (with moe_cfg.groups = G: of their G slices, E/G copies each)."""
    cfg = moe_cfg or MoEConfig(num_experts=num_experts, top_k=top_k)
    if cfg.num_experts != num_experts or cfg.top_k != top_k:
        raise UmeError("split_moe: moe_cfg disagrees with num_experts/top_k")
    if fc_in.out_features != fc_out.in_features or fc_in.in_features != fc_out.out_features:
        raise UmeError(
            f"FFN projections do not chain: in {fc_in.in_features}->{fc_in.out_features}, "
            f"out {fc_out.in_features}->{fc_out.out_features}"
        )
    router = MoERouter(fc_in.in_features, cfg, fc_in.out_features).to(fc_in.weight.device)
    routing = _Routing(router.slots_per_token)
    entry = MoEEntry(fc_in, routing, router, owns_router=True)
    exit_ = MoEExit(fc_out, routing, num_experts, cfg.groups)
    if fc_up is None:
        return entry, exit_
    if (fc_up.in_features, fc_up.out_features) != (fc_in.in_features, fc_in.out_features):
        raise UmeError("gated FFN: gate and up projections have different shapes")
    return entry, MoEEntry(fc_up, routing, router, owns_router=False), exit_
