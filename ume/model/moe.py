"""Mixture-of-Experts feed-forward layer (drop-in replacement for `FeedForward`).

Each valid frame is routed by a linear router (softmax over all E experts, float32) to its
top-k experts; the k gate weights are renormalised to sum to 1, so E copies of a dense FFN
(`MoEFeedForward.from_dense`, UME upcycling) reproduce the dense output exactly.

Experts are stored stacked (`experts.w_1` (E, D, H), `experts.b_1` (E, H), `experts.w_2`
(E, H, D), `experts.b_2` (E, D)). Dispatch sorts the k·N token-slots by expert, gathers the
tokens once, runs one addmm pair per expert on its contiguous block (a loop over E experts,
never over tokens) and scatters the gated results back with a single index_add. On CPU this
beat a padded (E, C_max, D) buffer + torch.bmm at every size from 256 to 8192 tokens (the
padded buffer wastes work whenever the load is uneven, e.g. right after upcycling with a zero
router where every token picks the same k experts); `dispatch="bmm"` is kept for comparison.

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
from ume.model.ffn import FeedForward, activation_fn


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
    raise ValueError(f"cannot upcycle an FFN with activation {type(act).__name__}")


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of FFN experts; forward(x (B, T, D), valid (B, T) | None)."""

    dispatch = "loop"  # "loop" (sorted blocks, one addmm pair per expert) or "bmm" (padded)

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
        e, k = cfg.num_experts, cfg.top_k
        if e < 1:
            raise ValueError(f"moe.num_experts={e}: an MoE layer needs at least 1 expert")
        if not 1 <= k <= e:
            raise ValueError(f"moe.top_k={k} must be between 1 and moe.num_experts={e}")
        if cfg.router_init not in ("zeros", "normal"):
            raise ValueError(f"moe.router_init={cfg.router_init!r}: use 'zeros' or 'normal'")
        if cfg.capacity_factor < 0 or cfg.jitter < 0:
            raise ValueError("moe.capacity_factor and moe.jitter must be >= 0")
        self.cfg = cfg
        self.num_experts, self.top_k = e, k
        self.d_model, self.d_ff = d_model, d_ff
        self.router = nn.Linear(d_model, e, bias=False)
        self.experts = Experts(e, d_model, d_ff)
        self.act = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)
        self.reset_router()
        self.aux_losses: dict[str, torch.Tensor] = {}
        self._stats: dict[str, torch.Tensor] | None = None
        self._pending: tuple | None = None  # what last_stats is computed from
        self.load_sum: torch.Tensor | None = None  # (E,) token-slot counts, not in state_dict
        self.track_load: bool | None = None  # None: accumulate load_sum in training only

    def __getstate__(self) -> dict:
        # per-forward results (graph-attached in training) are not part of the layer: leaving
        # them out keeps copy.deepcopy / pickling of a model working right after a forward
        state = self.__dict__.copy()
        state.update(aux_losses={}, _stats=None, _pending=None)
        return state

    def reset_router(self, generator: torch.Generator | None = None) -> None:
        """Initialise the router per cfg.router_init: zeros (uniform routing) or N(0, std²)."""
        with torch.no_grad():
            if self.cfg.router_init == "zeros":
                self.router.weight.zero_()
            else:
                w = torch.randn(self.router.weight.shape, generator=generator)
                self.router.weight.copy_(w * self.cfg.router_init_std)

    def reset_load(self) -> None:
        self.load_sum = None

    @classmethod
    def from_dense(cls, dense: FeedForward, moe_cfg: MoEConfig) -> MoEFeedForward:
        """An MoE layer whose experts are all exact copies of `dense` (router per cfg)."""
        d_ff, d_model = dense.w_1.weight.shape
        moe = cls(d_model, d_ff, _activation_name(dense.act), dense.dropout.p, moe_cfg)
        moe.to(device=dense.w_1.weight.device, dtype=dense.w_1.weight.dtype)
        with torch.no_grad():
            ex = moe.experts
            ex.w_1.copy_(dense.w_1.weight.t().unsqueeze(0).expand_as(ex.w_1))
            ex.b_1.copy_(dense.w_1.bias.unsqueeze(0).expand_as(ex.b_1))
            ex.w_2.copy_(dense.w_2.weight.t().unsqueeze(0).expand_as(ex.w_2))
            ex.b_2.copy_(dense.w_2.bias.unsqueeze(0).expand_as(ex.b_2))
        return moe

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"top_k={self.top_k}, capacity_factor={c.capacity_factor}, jitter={c.jitter}, "
            f"balance_coef={c.balance_coef}, z_loss_coef={c.z_loss_coef}"
        )

    # ---- routing ----------------------------------------------------------------------------
    def route(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xt (N, D) -> router logits (N, E) float32, top-k experts (N, k), gates (N, k)."""
        h = xt
        if self.training and self.cfg.jitter > 0:
            j = self.cfg.jitter
            h = h * torch.empty_like(h).uniform_(1.0 - j, 1.0 + j)
        with torch.autocast(device_type=h.device.type, enabled=False):  # route in float32
            logits = F.linear(h.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        gates, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k == 1:
            gates = torch.ones_like(gates)  # p / p
        else:
            gates = gates / gates.sum(-1, keepdim=True)
        return logits, experts, gates

    def capacity(self, n_tokens: int) -> int:
        """Token-slots each expert may take (training with capacity_factor > 0), else k·N."""
        cf = self.cfg.capacity_factor
        if not (self.training and cf > 0):
            return self.top_k * n_tokens
        return math.ceil(cf * self.top_k * n_tokens / self.num_experts)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), valid (B, T) bool or None (all frames valid) -> (B, T, D)."""
        shape = x.shape
        x_flat = x.reshape(-1, shape[-1])
        idx = None
        if valid is not None:
            idx = valid.reshape(-1).nonzero().squeeze(1)
            xt = x_flat.index_select(0, idx)
        else:
            xt = x_flat
        n, e, k = xt.size(0), self.num_experts, self.top_k

        logits, top_e, gates = self.route(xt)  # (N, E), (N, k), (N, k)
        # slots in choice-major order (all first choices, then all second choices, ...), so a
        # stable sort by expert puts an expert's first-choice tokens ahead of its second-choice
        # ones: under a capacity limit, lower-priority choices are dropped first (GShard).
        slot_e = top_e.t().reshape(-1)  # (k·N,)
        slot_g = gates.t().reshape(-1)
        order = slot_e.argsort(stable=True)
        sorted_tok = order % max(n, 1)
        sorted_g = slot_g.index_select(0, order)
        counts = torch.bincount(slot_e, minlength=e)  # (E,)
        sorted_e = None
        if self.dispatch == "bmm":
            sorted_e = slot_e.index_select(0, order)

        cap = self.capacity(n)
        dropped = torch.zeros((), device=x.device)
        if cap < k * n:
            if sorted_e is None:
                sorted_e = slot_e.index_select(0, order)
            starts = counts.cumsum(0) - counts
            pos = torch.arange(k * n, device=x.device) - starts.index_select(0, sorted_e)
            keep = pos < cap
            dropped = (~keep).sum().float()
            sorted_e, sorted_tok, sorted_g = sorted_e[keep], sorted_tok[keep], sorted_g[keep]
            kept_counts = counts.clamp(max=cap)
        else:
            kept_counts = counts

        if n == 0:
            out = xt.new_zeros(0, shape[-1])
        elif self.dispatch == "bmm":
            out = self._dispatch_bmm(xt, sorted_e, sorted_tok, sorted_g, kept_counts)
        else:
            out = self._dispatch_loop(xt, sorted_tok, sorted_g, kept_counts)

        if idx is not None:
            full = out.new_zeros(x_flat.size(0), shape[-1])
            full = full.index_copy(0, idx, out)
        else:
            full = out
        self._record(logits, counts, dropped, n)
        return full.view(*shape[:-1], shape[-1])

    def _dispatch_loop(
        self, xt: torch.Tensor, tok: torch.Tensor, gate: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        xs = xt.index_select(0, tok)  # (S, D), grouped by expert
        p = self.experts
        w_1, b_1, w_2, b_2 = p.w_1.unbind(0), p.b_1.unbind(0), p.w_2.unbind(0), p.b_2.unbind(0)
        ys = []
        for ex, chunk in enumerate(xs.split(counts.tolist())):
            if chunk.size(0) > 0:
                h = self.dropout(self.act(torch.addmm(b_1[ex], chunk, w_1[ex])))
                ys.append(torch.addmm(b_2[ex], h, w_2[ex]))
        y = torch.cat(ys) if ys else xs.new_zeros(0, xt.size(1))
        return self._combine(xt, y, tok, gate)

    def _dispatch_bmm(
        self,
        xt: torch.Tensor,
        e_idx: torch.Tensor,
        tok: torch.Tensor,
        gate: torch.Tensor,
        counts: torch.Tensor,
    ) -> torch.Tensor:
        e, d = self.num_experts, xt.size(1)
        c_max = int(counts.max()) if counts.numel() else 0
        starts = counts.cumsum(0) - counts
        pos = torch.arange(tok.numel(), device=xt.device) - starts.index_select(0, e_idx)
        flat = e_idx * c_max + pos
        buf = xt.new_zeros(e * c_max, d).index_copy(0, flat, xt.index_select(0, tok))
        p = self.experts
        h = torch.baddbmm(p.b_1.unsqueeze(1), buf.view(e, c_max, d), p.w_1)
        h = self.dropout(self.act(h))
        y = torch.baddbmm(p.b_2.unsqueeze(1), h, p.w_2).view(e * c_max, d)
        return self._combine(xt, y.index_select(0, flat), tok, gate)

    @staticmethod
    def _combine(
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

    # ---- losses and statistics --------------------------------------------------------------
    @property
    def last_stats(self) -> dict[str, torch.Tensor]:
        """Statistics of the last forward (computed on first access, so decoding, which never
        reads them, does not pay for them)."""
        if self._stats is None and self._pending is not None:
            self._stats = self._compute_stats(*self._pending)
            self._pending = None
        return self._stats or {}

    def _balance(self, logits: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
        """E·Σ f_i·P_i (1 when balanced, E when collapsed); gradient flows through P only."""
        load = counts.to(logits.dtype) / (self.top_k * n)
        return self.num_experts * (load * logits.softmax(-1).mean(0)).sum()

    @staticmethod
    def _z_loss(logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(logits, dim=-1).square().mean()

    def _record(
        self, logits: torch.Tensor, counts: torch.Tensor, dropped: torch.Tensor, n: int
    ) -> None:
        cfg = self.cfg
        aux: dict[str, torch.Tensor] = {}
        if self.training:
            zero = logits.sum()  # 0 (no frames), still attached to the router
            if cfg.balance_coef > 0:
                aux["balance"] = cfg.balance_coef * (
                    self._balance(logits, counts, n) if n > 0 else zero
                )
            if cfg.z_loss_coef > 0:
                aux["z_loss"] = cfg.z_loss_coef * (self._z_loss(logits) if n > 0 else zero)
        self.aux_losses = aux
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
        e, k = self.num_experts, self.top_k
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
        probs = logits.softmax(-1)
        load = counts.float() / (k * n)
        return {
            "load": load,
            "entropy": -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean(),
            "cv": load.std(unbiased=False) / load.mean(),
            "balance": self._balance(logits, counts, n),  # unscaled
            "z_loss": self._z_loss(logits),  # unscaled
            "dropped_frac": dropped / (k * n),
        }
