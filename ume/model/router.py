"""The MoE router: one implementation for both MoE layer types (`MoEFeedForward` and the split
MoE of `ume.upcycle`, ume/model/moe_split.py), so equal router weights route equally.

Contract, for tokens x (N, D) and a router weight W (E, D) (no bias):
    logits   x·Wᵀ in float32 (N, E), autocast or not. In training only: the input is
             multiplied by U(1 − jitter, 1 + jitter) noise, and N(0, router_noise²) noise is
             added to the logits (noisy top-k gating).
    groups   the E experts form G groups of E/G consecutive experts (fine-grained experts:
             expert e is in group e // (E/G)); the softmax is taken within each group and each
             group picks its own top-k, so a token has k·G slots (`slots_per_token`).
    experts  (N, k·G) global expert ids, group-major: column g·k + c is the c-th choice
             (descending probability) in group g.
    gates    (N, k·G): k ≥ 2: the group's k top probabilities divided by their sum (each
             group's gates sum to 1, so G copies of slices of a dense FFN with b_2/G sum to
             the dense output). k = 1: value exactly 1, gradient ∇p (a straight-through
             gate `1 + p − p.detach()`), the gradient Switch's `p·E(x)` gives the router at
             the same expert outputs. `top1_gradient = "log_p"` gives `p / p.detach()`
             (gradient ∇p / p) instead, for comparison (scripts/top1_gate_probe.py).
    balance  Switch load balancing, within groups: (E/G)·Σ_i f_i·P_i / G, with f_i the
             fraction of the group's token-slots taken by expert i and P_i its mean
             probability: 1 when balanced, E/G when collapsed; gradient through P only.
    z_loss   ST-MoE: mean over tokens and groups of logsumexp(group logits)².
    capacity in training with capacity_factor > 0: ceil(cf·k·G·N / E) token-slots per expert;
             `capacity_keep` says which slots stay (first choices before second ones).

Example:
    >>> r = Router(16, MoEConfig(num_experts=8, top_k=2, groups=2, router_init="normal"))
    >>> logits, experts, gates = r(torch.randn(5, 16))
    >>> experts.shape, gates.view(5, 2, 2).sum(-1)  # (5, 4); every group's gates sum to 1
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ume.config import MoEConfig
from ume.errors import UmeError

# "kmeans": set from the layer's input data by `ume upcycle --router-init kmeans`
ROUTER_INITS = ("zeros", "normal", "kmeans")
TOP1_GRADIENTS = ("p", "log_p")


def check_moe_config(cfg: MoEConfig, d_ff: int) -> None:
    """Raise UmeError (a ValueError) naming the field when cfg cannot build an MoE of hidden size d_ff."""
    e, k, g = cfg.num_experts, cfg.top_k, cfg.groups
    if e < 1:
        raise UmeError(f"moe.num_experts={e}: an MoE layer needs at least 1 expert")
    if g < 1 or e % g or d_ff % g:
        raise UmeError(
            f"moe.groups={g} must be >= 1 and divide moe.num_experts={e} and the FFN "
            f"hidden size {d_ff} (each group holds one 1/groups slice of the dense FFN)"
        )
    if not 1 <= k <= e // g:
        raise UmeError(
            f"moe.top_k={k} must be between 1 and the experts per group "
            f"(moe.num_experts/moe.groups = {e // g})"
        )
    if cfg.router_init not in ROUTER_INITS:
        raise UmeError(f"moe.router_init={cfg.router_init!r}: use one of {', '.join(ROUTER_INITS)}")
    if cfg.capacity_factor < 0 or cfg.jitter < 0 or cfg.router_noise < 0:
        raise UmeError("moe.capacity_factor, moe.jitter and moe.router_noise must be >= 0")


class Router(nn.Module):
    """Linear router over E experts in G groups (module docstring: the contract).

    forward(x (N, D)) -> logits (N, E) float32, experts (N, k·G) long, gates (N, k·G)."""

    def __init__(self, d_model: int, cfg: MoEConfig, d_ff: int | None = None) -> None:
        super().__init__()
        check_moe_config(cfg, d_ff if d_ff is not None else cfg.groups)
        self.cfg = cfg
        self.num_experts, self.groups = cfg.num_experts, cfg.groups
        self.top_k_per_group = cfg.top_k  # experts a token picks inside each group
        self.slots_per_token = cfg.top_k * cfg.groups  # token-slots per token, all groups
        self.top1_gradient = "p"
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, d_model))  # (E, D)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """zeros (uniform routing) or N(0, router_init_std²). "kmeans" routers are computed
        from data when upcycling (ume/upcycle/router_init.py); until then they are zeros."""
        with torch.no_grad():
            if self.cfg.router_init == "normal":
                w = torch.randn(self.weight.shape, generator=generator)
                self.weight.copy_(w * self.cfg.router_init_std)
            else:
                self.weight.zero_()

    def extra_repr(self) -> str:
        e, d = self.weight.shape
        return f"d_model={d}, num_experts={e}, groups={self.groups}, top_k_per_group={self.top_k_per_group}"

    # ---- routing ------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (N, E) float32 logits (jitter and noise in training)."""
        h = x
        if self.training and self.cfg.jitter > 0:
            j = self.cfg.jitter
            h = h * torch.empty_like(h).uniform_(1.0 - j, 1.0 + j)
        if torch.is_autocast_enabled(h.device.type):
            with torch.autocast(device_type=h.device.type, enabled=False):
                logits = F.linear(h.float(), self.weight.float())
        else:
            logits = F.linear(h.float(), self.weight.float())
        if self.training and self.cfg.router_noise > 0:  # noisy top-k gating (exploration)
            logits = logits + torch.randn_like(logits) * self.cfg.router_noise
        return logits

    def group_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, E) logits -> (N, E) probabilities, softmax within each group."""
        n = logits.size(0)
        return logits.view(n, self.groups, -1).softmax(-1).view(n, -1)

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, E) logits -> experts (N, k·G), gates (N, k·G), group-major."""
        n, g, k = logits.size(0), self.groups, self.top_k_per_group
        probs = logits.view(n, g, -1).softmax(-1)  # (N, G, E/G)
        top_p, experts = probs.topk(k, dim=-1)  # (N, G, k)
        if k > 1:
            gates = top_p / top_p.sum(-1, keepdim=True)
        elif self.top1_gradient == "p":
            gates = 1.0 + (top_p - top_p.detach())  # value 1, gradient ∇p
        else:
            gates = top_p / top_p.detach()  # value 1, gradient ∇p / p = ∇log p
        if g > 1:  # group-local expert indices -> global ones
            offset = torch.arange(g, device=experts.device).mul_(self.num_experts // g)
            experts = experts + offset.view(1, g, 1)
        return experts.reshape(n, g * k), gates.reshape(n, g * k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> logits (N, E), experts (N, k·G), gates (N, k·G)."""
        if self.top1_gradient not in TOP1_GRADIENTS:
            raise UmeError(f"top1_gradient={self.top1_gradient!r}: use one of {TOP1_GRADIENTS}")
        logits = self.logits(x)
        experts, gates = self.select(logits)
        return logits, experts, gates

    # ---- capacity -----------------------------------------------------------------------
    def capacity(self, n_tokens: int) -> int:
        """Token-slots each expert may take: ceil(cf·k·G·N / E) in training with
        capacity_factor cf > 0, else k·G·N (nothing dropped)."""
        cf, s = self.cfg.capacity_factor, self.slots_per_token
        if not (self.training and cf > 0):
            return s * n_tokens
        return math.ceil(cf * s * n_tokens / self.num_experts)

    # ---- auxiliary losses ---------------------------------------------------------------
    def balance(self, logits: torch.Tensor, counts: torch.Tensor, n: int) -> torch.Tensor:
        """Unscaled balance loss of n tokens' logits (n, E) and slot counts (E,)."""
        g = self.groups
        load = counts.to(logits.dtype) / (self.slots_per_token * n) * g  # within-group fracs
        per_group = self.num_experts // g
        return per_group * (load * self.group_probs(logits).mean(0)).sum() / g

    def z_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Unscaled router z-loss of logits (n, E)."""
        n = logits.size(0)
        return torch.logsumexp(logits.view(n, self.groups, -1), dim=-1).square().mean()

    def losses(self, logits: torch.Tensor, counts: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """{"balance": α·balance, "z_loss": β·z_loss} of n routed tokens in training (a term
        with a zero coefficient is left out); {} in eval."""
        cfg, aux = self.cfg, {}
        if not self.training:
            return aux
        zero = logits.sum()  # 0 (no tokens), still attached to the router
        if cfg.balance_coef > 0:
            aux["balance"] = cfg.balance_coef * (self.balance(logits, counts, n) if n else zero)
        if cfg.z_loss_coef > 0:
            aux["z_loss"] = cfg.z_loss_coef * (self.z_loss(logits) if n else zero)
        return aux


def capacity_keep(sorted_e: torch.Tensor, counts: torch.Tensor, cap: int) -> torch.Tensor:
    """(S,) bool: which of the expert-sorted slots (sorted_e (S,) expert per slot, counts (E,))
    fit in `cap` slots per expert. Slots enter the sort choice-major (every token's first
    choice, then the second ones, ...) and the sort is stable, so an expert keeps its
    first-choice tokens before any second choice (GShard)."""
    starts = counts.cumsum(0) - counts
    pos = torch.arange(sorted_e.numel(), device=sorted_e.device) - starts.index_select(0, sorted_e)
    return pos < cap
