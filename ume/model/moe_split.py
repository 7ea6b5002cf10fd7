"""MoE for any feed-forward block, split at its two projections (used by `ume.upcycle`).

A feed-forward block computes `out(elementwise(in(x)))`, where `elementwise` is whatever the
model's own code does between the two Linear layers: an activation, a dropout, a GLU product
`act(gate(x)) * up(x)`. The block may be a submodule (`Wav2Vec2FeedForward`, an
`nn.Sequential`, a SwiGLU MLP) or inline in a layer's forward (Whisper: `self.fc1`,
`self.activation_fn`, `self.fc2` are attributes of the encoder layer). Replacing the block by
one module would need to know that forward code; replacing its two projections does not:

    in  (Linear D -> H)  ->  MoEEntry   routes each token to its top-k experts and returns the
                                       k selected experts' pre-activations side by side,
                                       (..., k·H)
    model's own elementwise ops         run unchanged on (..., k·H) (elementwise, so per expert)
    out (Linear H -> D)  ->  MoEExit    applies each slot's expert down-projection to its H
                                       columns and sums the k results weighted by the gates

so the layer's forward, activation and dropout placement stay exactly as written. A gated
block has two entries (gate and up projection) sharing one routing decision: the entry that
owns the router routes, the other reuses the routing of the same input. With E copies of the
dense weights the gates sum to 1 and the output equals the dense block's (`ume.upcycle`
verifies it). Requirement: between `in` and `out` the model does only elementwise work on the
hidden vector (true for every FFN we know); anything else fails the verification.

Routing is the same as `MoEFeedForward`'s: softmax over E experts in float32, top-k, the k
gates renormalised to sum to 1 (top-1: value 1 with the gradient of p, `p / p.detach()`).
Every token is routed (the block does not see padding masks, so every output equals the dense
block's). After each forward the router's owner holds `aux_losses` ({"balance": α·E·Σ f_i·P_i,
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
import torch.nn.functional as F
from torch import nn

from ume.config import MoEConfig


class _Routing:
    """The routing decision of the last input, shared by a block's entries and its exit."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self.reset()

    def reset(self) -> None:
        self.x_ref: weakref.ref | None = None  # the routed input (identity, not address)
        self.n = 0
        self.order: torch.Tensor | None = None  # (k·N,) slot ids (tok·k + choice), by expert
        self.sorted_tok: torch.Tensor | None = None  # (k·N,) token of each sorted slot
        self.sorted_gate: torch.Tensor | None = None  # (k·N,) gate of each sorted slot
        self.inverse: torch.Tensor | None = None  # (k·N,) position of slot s in sorted order
        self.sizes: list[int] = []  # slots per expert

    def routed(self, x: torch.Tensor) -> bool:
        return self.x_ref is not None and self.x_ref() is x

    # per-forward state is not part of the model: copies start empty (deepcopy keeps the
    # sharing between a block's entries and exit through its memo)
    def __getstate__(self) -> dict:
        return {"top_k": self.top_k}

    def __setstate__(self, state: dict) -> None:
        self.top_k = state["top_k"]
        self.reset()


class MoERouter(nn.Module):
    """Linear router (no bias) + top-k renormalised gates + Switch balance and z-loss."""

    def __init__(self, d_model: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, d_model))
        if cfg.router_init == "normal":
            nn.init.normal_(self.weight, std=cfg.router_init_std)
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.last_load: torch.Tensor | None = None
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
            raise ValueError(
                f"ume.valid_frames: a mask of shape {tuple(self.valid.shape)} "
                f"({v.numel()} tokens) for an MoE layer that routes {n} tokens; pass the mask "
                "with the submodule whose FFNs see that sequence (e.g. model.encoder)"
            )
        return v

    def forward(self, xf: torch.Tensor, routing: _Routing) -> None:
        """Route xf (N, D); fills `routing` and records the auxiliary losses."""
        n, e, k = xf.size(0), self.num_experts, self.top_k
        h = xf
        if self.training and self.cfg.jitter > 0:
            j = self.cfg.jitter
            h = h * torch.empty_like(h).uniform_(1.0 - j, 1.0 + j)
        with torch.autocast(device_type=xf.device.type, enabled=False):
            logits = F.linear(h.float(), self.weight.float())  # (N, E)
        probs = logits.softmax(-1)
        top_p, top_e = probs.topk(k, dim=-1)  # (N, k)
        gates = top_p / top_p.detach() if k == 1 else top_p / top_p.sum(-1, keepdim=True)
        slot_e = top_e.reshape(-1)  # (k·N,) token-major: slot s = tok·k + choice
        order = slot_e.argsort(stable=True)
        counts = torch.bincount(slot_e, minlength=e)  # (E,)
        routing.n = n
        routing.order = order
        routing.sorted_tok = torch.div(order, k, rounding_mode="floor")
        routing.sorted_gate = gates.reshape(-1).index_select(0, order)
        routing.inverse = torch.empty_like(order)
        routing.inverse[order] = torch.arange(order.numel(), device=order.device)
        routing.sizes = counts.tolist()
        v = self._valid_rows(n)
        if v is not None:  # statistics over valid tokens only
            logits, probs, top_e = logits[v], probs[v], top_e[v]
            counts = torch.bincount(top_e.reshape(-1), minlength=e)
        n_stat = probs.size(0)
        self.last_load = counts.detach().float() / max(k * n_stat, 1)
        aux: dict[str, torch.Tensor] = {}
        if self.training and n_stat > 0:
            if self.cfg.balance_coef > 0:
                frac = counts.to(probs.dtype) / (k * n_stat)
                aux["balance"] = self.cfg.balance_coef * e * (frac * probs.mean(0)).sum()
            if self.cfg.z_loss_coef > 0:
                z = torch.logsumexp(logits, dim=-1).square().mean()
                aux["z_loss"] = self.cfg.z_loss_coef * z
        self.aux_losses = aux


def _stacked(w: torch.Tensor, e: int) -> nn.Parameter:
    return nn.Parameter(w.detach().unsqueeze(0).repeat(e, *([1] * w.dim())).contiguous())


def _per_expert(
    xs: torch.Tensor, sizes: list[int], w: torch.Tensor, b: torch.Tensor | None
) -> torch.Tensor:
    """Rows xs (S, ·) grouped by expert (sizes (E,)) through expert e's affine map w[e] (·, ·)
    + b[e] -> (S, out); autograd ops, any activation happens outside."""
    out = []
    for ex, chunk in enumerate(xs.split(sizes)):
        if chunk.size(0) == 0:
            continue
        out.append(torch.addmm(b[ex], chunk, w[ex]) if b is not None else chunk @ w[ex])
    if not out:
        return xs.new_zeros(0, w.size(-1))
    return torch.cat(out) if len(out) > 1 else out[0]


class MoEEntry(nn.Module):
    """Replaces an FFN's input projection Linear(D, H): x (..., D) -> (..., k·H), the selected
    experts' projections of each token side by side. The router is a submodule of the
    block's first entry only; a gated block's second entry shares it (and the routing)."""

    def __init__(
        self, linear: nn.Linear, routing: _Routing, router: MoERouter, owns_router: bool
    ) -> None:
        super().__init__()
        self.routing = routing
        if owns_router:
            self.router = router
        else:
            self._shared_router = [router]  # a plain list: not registered twice
        e = router.num_experts
        self.num_experts, self.in_features, self.hidden = e, linear.in_features, linear.out_features
        self.weight = _stacked(linear.weight.t(), e)  # (E, D, H)
        self.bias = _stacked(linear.bias, e) if linear.bias is not None else None

    def _router(self) -> MoERouter:
        return self.router if "router" in self._modules else self._shared_router[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., k·H)."""
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # (N, D)
        r = self.routing
        if not r.routed(x):  # the block's first projection routes; a gated second reuses
            self._router()(xf, r)
            r.x_ref = weakref.ref(x)
        xs = xf.index_select(0, r.sorted_tok)  # (k·N, D), grouped by expert
        hs = _per_expert(xs, r.sizes, self.weight, self.bias)  # (k·N, H), sorted order
        h = hs.index_select(0, r.inverse)  # (k·N, H), slot order tok·k + choice
        return h.view(*shape[:-1], r.top_k * self.hidden)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, in_features={self.in_features}, "
            f"hidden={self.hidden}, routes={'router' in self._modules}"
        )


class MoEExit(nn.Module):
    """Replaces an FFN's output projection Linear(H, D): h (..., k·H) from the model's
    elementwise ops on MoEEntry's output -> (..., D), gate-weighted sum over the k experts."""

    def __init__(self, linear: nn.Linear, routing: _Routing, num_experts: int) -> None:
        super().__init__()
        self.routing = routing
        self.hidden, self.out_features = linear.in_features, linear.out_features
        self.weight = _stacked(linear.weight.t(), num_experts)  # (E, H, D)
        self.bias = _stacked(linear.bias, num_experts) if linear.bias is not None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.routing
        if r.order is None or h.numel() != r.order.numel() * self.hidden:
            raise RuntimeError(
                f"MoEExit got hidden {tuple(h.shape)}, but its entry routed {r.n} tokens to "
                f"{r.order.numel() if r.order is not None else 0} slots of {self.hidden}: the "
                "code between the FFN's two projections must be elementwise"
            )
        hs = h.reshape(-1, self.hidden).index_select(0, r.order)  # (k·N, H), sorted
        ys = _per_expert(hs, r.sizes, self.weight, self.bias)  # (k·N, D)
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
    whose activated projection is fc_in and linear one fc_up. Experts are E copies."""
    cfg = moe_cfg or MoEConfig(num_experts=num_experts, top_k=top_k)
    if cfg.num_experts != num_experts or cfg.top_k != top_k:
        raise ValueError("split_moe: moe_cfg disagrees with num_experts/top_k")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
    if fc_in.out_features != fc_out.in_features or fc_in.in_features != fc_out.out_features:
        raise ValueError(
            f"FFN projections do not chain: in {fc_in.in_features}->{fc_in.out_features}, "
            f"out {fc_out.in_features}->{fc_out.out_features}"
        )
    routing = _Routing(top_k)
    router = MoERouter(fc_in.in_features, cfg).to(fc_in.weight.device)
    entry = MoEEntry(fc_in, routing, router, owns_router=True)
    exit_ = MoEExit(fc_out, routing, num_experts)
    if fc_up is None:
        return entry, exit_
    if (fc_up.in_features, fc_up.out_features) != (fc_in.in_features, fc_in.out_features):
        raise ValueError("gated FFN: gate and up projections have different shapes")
    return entry, MoEEntry(fc_up, routing, router, owns_router=False), exit_
