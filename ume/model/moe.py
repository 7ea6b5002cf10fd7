"""Mixture-of-Experts feed-forward layer (drop-in replacement for `FeedForward`).

Each valid frame is routed by `layer.router` (a `Router`, ume/model/router.py, the routing
contract shared with the split MoE: float32 logits, softmax within each of G groups, top-k
per group, gates renormalised to sum to 1 per group) to its k·G experts
(`layer.slots_per_token`), so E copies of a dense FFN (`MoEFeedForward.from_dense`, UME
upcycling) reproduce the dense output exactly.

Experts are stored stacked (`experts.w_1` (E, D, H), `experts.b_1` (E, H), `experts.w_2`
(E, H, D), `experts.b_2` (E, D)). The forward routes, sorts the k·N token-slots by expert and
hands them to a dispatch path (ume/model/moe_dispatch.py: sorted loop of one addmm pair per
expert, its no-graph and padded-bmm variants, expert_ffn's backward in training; "grouped"
torch._grouped_mm calls; "auto", loop or grouped per shape by measurement; and the
export-friendly "masked"/"dense" paths tracing uses), chosen per layer by
`layer.dispatch_options` (a `DispatchOptions`; see docs/PERFORMANCE.md for the measurements).

Padding frames (valid == False) are not routed: the layer outputs 0 there (the model masks
padding downstream, so only valid frames matter). Auxiliary losses and statistics count valid
frames only.

After every forward:
    aux_losses  {"balance": α·E·Σ f_i·P_i, "z_loss": β·mean(logsumexp(logits)²)} in training
                (terms with a zero coefficient omitted; {} in eval), summed into the loss by
                ASRModel.moe_aux_losses
    last_stats  detached tensors: load (E,) fraction of token-slots per expert, entropy (mean
                router entropy, nats), cv (std/mean of load), balance and z_loss (unscaled:
                balance is 1 when perfectly balanced, E when collapsed), dropped_frac
    load_sum    running (E,) token-slot counts, accumulated in training (or whenever
                `track_load` is True); a plain attribute, not part of the state dict

Example:
    >>> moe = MoEFeedForward.from_dense(FeedForward(144, 576), MoEConfig(num_experts=8))
    >>> y = moe(torch.randn(2, 10, 144), torch.ones(2, 10, dtype=torch.bool))
    >>> moe.last_stats["load"].shape
    torch.Size([8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ume.config import MoEConfig
from ume.errors import UmeError
from ume.model.ffn import FeedForward, activation_fn
from ume.model.moe_dispatch import STATIC_PATHS, DispatchOptions, dispatch_sorted, forward_static
from ume.model.moe_dispatch import tracing as _tracing
from ume.model.router import ROUTER_INITS, Router, check_moe_config

__all__ = ["ROUTER_INITS", "Experts", "MoEFeedForward", "expert_tensors_from_dense"]


class Experts(nn.Module):
    """E stacked two-layer FFN experts: y_e = act(x·w_1[e] + b_1[e])·w_2[e] + b_2[e]."""

    def __init__(self, num_experts: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.num_experts, self.d_model, self.d_ff = num_experts, d_model, d_ff
        self.w_1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.b_1 = nn.Parameter(torch.empty(num_experts, d_ff))
        self.w_2 = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.b_2 = nn.Parameter(torch.empty(num_experts, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same distribution as nn.Linear's default init, independently per expert."""
        for w, b, fan_in in ((self.w_1, self.b_1, self.d_model), (self.w_2, self.b_2, self.d_ff)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}"


def _activation_name(act: nn.Module) -> str:
    if isinstance(act, nn.SiLU):
        return "swish"
    if isinstance(act, nn.ReLU):
        return "relu"
    raise UmeError(f"cannot upcycle an FFN with activation {type(act).__name__}")


def expert_tensors_from_dense(
    w_1: torch.Tensor,
    b_1: torch.Tensor,
    w_2: torch.Tensor,
    b_2: torch.Tensor,
    num_experts: int,
    groups: int = 1,
) -> dict[str, torch.Tensor]:
    """Stacked expert tensors that reproduce a dense FFN exactly under top-k renormalised
    routing. Dense nn.Linear layouts: w_1 (H, D), b_1 (H,), w_2 (D, H), b_2 (D,).

    groups = 1: every expert is a copy -> w_1 (E, D, H), b_1 (E, H), w_2 (E, H, D), b_2 (E, D).
    groups = G (fine-grained experts, Megatron's "granularity" with virtual groups): the H
    hidden units are cut into G slices of H/G; the E/G experts of group g are copies of slice g
    and carry b_2/G, so whichever experts a token picks inside each group (gates renormalised
    per group), the G group outputs sum to the dense output.
    """
    h, d = w_1.shape
    if num_experts % groups or h % groups:
        raise UmeError(f"groups={groups} must divide num_experts={num_experts} and H={h}")
    per, hs = num_experts // groups, h // groups
    w1 = w_1.t().reshape(d, groups, hs).permute(1, 0, 2)  # (G, D, H/G)
    b1 = b_1.reshape(groups, hs)  # (G, H/G)
    w2 = w_2.t().reshape(groups, hs, d)  # (G, H/G, D)
    b2 = (b_2 / groups).unsqueeze(0).expand(groups, d)  # (G, D)

    def rep(t: torch.Tensor) -> torch.Tensor:  # (G, ...) -> (E, ...), group-major
        return t.repeat_interleave(per, dim=0).contiguous()

    return {"w_1": rep(w1), "b_1": rep(b1), "w_2": rep(w2), "b_2": rep(b2)}


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of FFN experts; forward(x (B, T, D), valid (B, T) | None)."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "swish",
        dropout: float = 0.0,
        moe_cfg: MoEConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = moe_cfg if moe_cfg is not None else MoEConfig(num_experts=8)
        check_moe_config(cfg, d_ff)
        e, g = cfg.num_experts, cfg.groups
        self.cfg = cfg
        self.num_experts, self.groups = e, g
        self.d_model, self.d_ff = d_model, d_ff // g  # d_ff: one expert's hidden size
        self.router = Router(d_model, cfg, d_ff)  # routing, gates, capacity, aux losses
        # token-slots per token over all groups: groups x the per-group top-k (cfg.top_k)
        self.slots_per_token = self.router.slots_per_token
        self.experts = Experts(e, d_model, d_ff // g)
        self.act = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)
        self.aux_losses: dict[str, torch.Tensor] = {}
        self._stats: dict[str, torch.Tensor] | None = None
        self._pending: tuple | None = None  # what last_stats is computed from
        self.load_sum: torch.Tensor | None = None  # (E,) token-slot counts, not in state_dict
        self.track_load: bool | None = None  # None: accumulate load_sum in training only
        self.dispatch_options = DispatchOptions()  # this layer's dispatch path (moe_dispatch)

    def __getstate__(self) -> dict:
        # per-forward results (graph-attached in training) are not part of the layer: leaving
        # them out keeps copy.deepcopy / pickling of a model working right after a forward
        state = self.__dict__.copy()
        state.update(aux_losses={}, _stats=None, _pending=None)
        return state

    @property
    def top_k(self) -> int:
        """Alias of `slots_per_token` (k·G), for callers that read `layer.top_k`; the
        per-group k is `cfg.top_k`."""
        return self.slots_per_token

    def reset_router(self, generator: torch.Generator | None = None) -> None:
        """Initialise the router per cfg.router_init (Router.reset_parameters)."""
        self.router.reset_parameters(generator)

    def reset_load(self) -> None:
        self.load_sum = None

    @classmethod
    def from_dense(cls, dense: FeedForward, moe_cfg: MoEConfig) -> MoEFeedForward:
        """An MoE layer computing exactly what `dense` does: every expert a copy of the dense
        FFN, or with moe_cfg.groups = G, of one 1/G slice of its hidden units (router per cfg).
        """
        d_ff, d_model = dense.w_1.weight.shape
        moe = cls(d_model, d_ff, _activation_name(dense.act), dense.dropout.p, moe_cfg)
        moe.to(device=dense.w_1.weight.device, dtype=dense.w_1.weight.dtype)
        tensors = expert_tensors_from_dense(
            dense.w_1.weight,
            dense.w_1.bias,
            dense.w_2.weight,
            dense.w_2.bias,
            moe.num_experts,
            moe.groups,
        )
        with torch.no_grad():
            for name, t in tensors.items():
                getattr(moe.experts, name).copy_(t)
        return moe

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"slots_per_token={self.slots_per_token}, groups={self.groups}, capacity_factor={c.capacity_factor}, "
            f"jitter={c.jitter}, router_noise={c.router_noise}, "
            f"balance_coef={c.balance_coef}, z_loss_coef={c.z_loss_coef}"
        )

    # ---- routing ----------------------------------------------------------------------------
    def route(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xt (N, D) -> router logits (N, E) float32, experts (N, k·G), gates (N, k·G)
        (ume/model/router.py: the contract)."""
        return self.router(xt)

    def capacity(self, n_tokens: int) -> int:
        """Token-slots each expert may take (training with capacity_factor > 0), else k·G·N."""
        return self.router.capacity(n_tokens)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), valid (B, T) bool or None (all frames valid) -> (B, T, D)."""
        shape = x.shape
        x_flat = x.reshape(-1, shape[-1])
        opts = self.dispatch_options
        if opts.path in STATIC_PATHS or _tracing():
            path = opts.path if opts.path in STATIC_PATHS else opts.export_path
            return forward_static(self, x_flat, valid, path).view(shape)
        idx = None
        if valid is not None and not bool(valid.all()):
            idx = valid.reshape(-1).nonzero().squeeze(1)
            xt = x_flat.index_select(0, idx)
        else:
            xt = x_flat
        n, e, k = xt.size(0), self.num_experts, self.slots_per_token

        logits, top_e, gates = self.route(xt)  # (N, E), (N, k·G), (N, k·G)
        # slots in choice-major order (all first choices, then all second choices, ...), so a
        # stable sort by expert puts an expert's first-choice tokens ahead of its second-choice
        # ones: under a capacity limit, lower-priority choices are dropped first (GShard).
        slot_e = top_e.t().reshape(-1)  # (k·N,)
        order = slot_e.argsort(stable=True)
        sorted_tok = order % max(n, 1) if k > 1 else order
        counts = torch.bincount(slot_e, minlength=e)  # (E,)

        out, dropped = dispatch_sorted(self, xt, slot_e, order, sorted_tok, counts, gates)

        if idx is not None:
            full = out.new_zeros(x_flat.size(0), shape[-1])
            full = full.index_copy(0, idx, out)
        else:
            full = out
        self._record(logits, counts, dropped, n)
        return full.view(*shape[:-1], shape[-1])

    # ---- specialisation diagnostics -----------------------------------------------------------
    @torch.no_grad()
    def expert_similarity(self) -> torch.Tensor:
        """(E, E) cosine similarity of the experts' flattened (w_1, b_1, w_2, b_2)."""
        ex = self.experts
        flat = torch.cat(
            [
                t.detach().float().reshape(ex.num_experts, -1)
                for t in (ex.w_1, ex.b_1, ex.w_2, ex.b_2)
            ],
            dim=1,
        )
        flat = F.normalize(flat, dim=1)
        return flat @ flat.t()

    def similarity_summary(self) -> tuple[float, float]:
        """(mean, min) pairwise expert cosine similarity over pairs that start equal: all pairs,
        or with groups > 1 the pairs inside one group (other groups hold other FFN slices).
        1.0 right after upcycling; falls as the experts become different."""
        e, per = self.num_experts, self.num_experts // self.groups
        if per < 2:
            return 1.0, 1.0
        sim = self.expert_similarity()
        gid = torch.arange(e, device=sim.device) // per
        pairs = (gid.view(-1, 1) == gid.view(1, -1)) & ~torch.eye(
            e, dtype=torch.bool, device=sim.device
        )
        vals = sim[pairs]
        return float(vals.mean()), float(vals.min())

    # ---- losses and statistics --------------------------------------------------------------
    @property
    def last_stats(self) -> dict[str, torch.Tensor]:
        """Statistics of the last forward (computed on first access, so decoding, which never
        reads them, does not pay for them)."""
        if self._stats is None and self._pending is not None:
            self._stats = self._compute_stats(*self._pending)
            self._pending = None
        return self._stats or {}

    def _group_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, E) logits -> (N, E) router probabilities, softmax within each group."""
        return self.router.group_probs(logits)

    def _balance(self, logits: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
        return self.router.balance(logits, counts, n)

    def _z_loss(self, logits: torch.Tensor) -> torch.Tensor:
        return self.router.z_loss(logits)

    def _record(
        self, logits: torch.Tensor, counts: torch.Tensor, dropped: torch.Tensor, n: int
    ) -> None:
        self.aux_losses = self.router.losses(logits, counts, n)
        self._pending = (logits.detach(), counts.detach(), dropped.detach(), n)
        self._stats = None
        track = self.training if self.track_load is None else self.track_load
        if track:
            c = counts.detach().double()
            if self.load_sum is None or self.load_sum.device != c.device:
                self.load_sum = torch.zeros(self.num_experts, dtype=torch.float64, device=c.device)
            self.load_sum += c

    def _compute_stats(
        self, logits: torch.Tensor, counts: torch.Tensor, dropped: torch.Tensor, n: int
    ) -> dict[str, torch.Tensor]:
        e, k = self.num_experts, self.slots_per_token
        if n == 0:
            zero = torch.zeros((), device=logits.device)
            return {
                "load": torch.zeros(e, device=logits.device),
                "entropy": zero,
                "cv": zero,
                "balance": zero,
                "z_loss": zero,
                "dropped_frac": zero,
            }
        probs = self._group_probs(logits)
        load = counts.float() / (k * n)
        return {
            "load": load,
            # mean router entropy per token (nats; with groups: per group, averaged)
            "entropy": -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean() / self.groups,
            "cv": load.std(unbiased=False) / load.mean(),
            "balance": self._balance(logits, counts, n),  # unscaled
            "z_loss": self._z_loss(logits),  # unscaled
            "dropped_frac": dropped / (k * n),
        }
