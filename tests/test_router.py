"""One router for both MoE layer types: ume's MoEFeedForward and the split MoE that
`ume.upcycle` builds for any model. Equal router weights route equally, every MoEConfig
setting takes effect in the split MoE or is refused by name, the top-1 gate's gradient is the
documented one, and the split MoE's backward is O(E) in the number of experts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ume
from ume.config import MoEConfig
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward
from ume.model.moe_split import MoEEntry, MoERouter, split_moe
from ume.model.router import Router
from ume.upcycle.any_model import UpcycleAnyError

D, H = 16, 32


def _pair(cfg: MoEConfig, seed: int = 0) -> tuple[MoEFeedForward, nn.Module, nn.Module]:
    """The same dense FFN as a ume MoE layer and as a split MoE (entry, exit), with the same
    (perturbed) experts and router."""
    torch.manual_seed(seed)
    dense = FeedForward(D, H, "swish")
    ume_layer = MoEFeedForward.from_dense(dense, cfg)
    with torch.no_grad():
        for p in ume_layer.experts.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
    entry, exit_ = split_moe(dense.w_1, dense.w_2, cfg.num_experts, cfg.top_k, moe_cfg=cfg)
    with torch.no_grad():
        ex = ume_layer.experts
        entry.weight.copy_(ex.w_1)
        entry.bias.copy_(ex.b_1)
        exit_.weight.copy_(ex.w_2)
        exit_.bias.copy_(ex.b_2)
        entry.router.weight.copy_(ume_layer.router.weight)
    return ume_layer, entry, exit_


def _split_forward(entry: nn.Module, exit_: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return exit_(torch.nn.functional.silu(entry(x)))


@pytest.mark.parametrize(
    ("experts", "top_k", "groups", "capacity"),
    [
        (4, 1, 1, 0.0),
        (8, 2, 1, 0.0),
        (8, 2, 2, 0.0),
        (8, 1, 4, 0.0),
        (8, 2, 1, 0.6),
        (8, 1, 2, 0.7),
    ],
)
def test_both_layer_types_route_and_compute_alike(
    experts: int, top_k: int, groups: int, capacity: float
) -> None:
    cfg = MoEConfig(
        num_experts=experts, top_k=top_k, groups=groups, capacity_factor=capacity,
        router_init="normal", router_init_std=1.0, balance_coef=0.1, z_loss_coef=0.01,
    )  # fmt: skip
    ume_layer, entry, exit_ = _pair(cfg)
    assert isinstance(ume_layer.router, Router) and isinstance(entry.router, MoERouter)
    x = torch.randn(3, 11, D)
    for training in (False, True):
        ume_layer.train(training), entry.train(training), exit_.train(training)
        a = ume_layer.route(x.reshape(-1, D))
        b = entry.router(x.reshape(-1, D))
        for t, u in zip(a, b):
            assert torch.equal(t, u)
        y_ume = ume_layer(x)
        y_split = _split_forward(entry, exit_, x)
        torch.testing.assert_close(y_split, y_ume, rtol=1e-5, atol=1e-6)
        assert ume_layer.aux_losses.keys() == entry.router.aux_losses.keys()
        for k, v in ume_layer.aux_losses.items():
            torch.testing.assert_close(entry.router.aux_losses[k], v)
        if training and capacity > 0:  # the capacity drops slots, the same ones in both
            assert float(ume_layer.last_stats["dropped_frac"]) > 0
            assert entry.router.last_dropped_frac == pytest.approx(
                float(ume_layer.last_stats["dropped_frac"])
            )
        else:
            assert entry.router.last_dropped_frac == 0.0
        torch.testing.assert_close(entry.router.last_load, ume_layer.last_stats["load"])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_split_groups_slice_the_ffn_and_preserve_function(groups: int) -> None:
    model = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D))
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        ref = model(x)
    cfg = MoEConfig(groups=groups, router_init="normal", router_init_std=1.0)
    ume.upcycle(model, num_experts=8, top_k=1, moe=cfg, verify_input=x)
    assert model[0].weight.shape == (8, D, H // groups)
    assert model[2].weight.shape == (8, H // groups, D)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        _, experts, _ = model[0].router(x.reshape(-1, D))
    per = 8 // groups  # one expert of every group per token
    assert torch.equal(experts // per, torch.arange(groups).expand(10, -1))


def test_split_router_noise_only_in_training() -> None:
    cfg = MoEConfig(num_experts=8, top_k=2, router_noise=1.0, router_init="normal")
    _, entry, exit_ = _pair(cfg)
    x = torch.randn(64, D)
    entry.eval()
    e1, e2 = entry.router(x)[1], entry.router(x)[1]
    assert torch.equal(e1, e2)
    entry.train()
    assert not torch.equal(entry.router(x)[1], e1)


def test_split_capacity_drops_in_training_only() -> None:
    cfg = MoEConfig(num_experts=4, top_k=2, capacity_factor=0.5)  # zero router: skewed load
    _, entry, exit_ = _pair(cfg)
    x = torch.randn(40, D)
    entry.train(), exit_.train()
    y = _split_forward(entry, exit_, x)
    assert entry.router.last_dropped_frac >= 0.5  # 2 of 4 experts take every token
    assert int(entry.router.last_load.gt(0).sum()) == 2
    assert y.shape == x.shape and torch.isfinite(y).all()
    entry.eval(), exit_.eval()
    _split_forward(entry, exit_, x)
    assert entry.router.last_dropped_frac == 0.0


def test_counts_are_named_for_what_they_count() -> None:
    """k per group and k·G slots per token have their own names on the router and both layers;
    the layer's `top_k` stays only as an alias of slots_per_token for older callers."""
    cfg = MoEConfig(num_experts=8, top_k=2, groups=2)
    r = Router(16, cfg, 32)
    assert (r.top_k_per_group, r.slots_per_token) == (2, 4) and not hasattr(r, "k")
    assert "top_k_per_group=2" in repr(r)
    layer = MoEFeedForward(16, 32, moe_cfg=cfg)
    assert (layer.cfg.top_k, layer.slots_per_token, layer.top_k) == (2, 4, 4)


def test_unsupported_settings_are_refused_by_name() -> None:
    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, D))

    with pytest.raises(UpcycleAnyError, match="router_init='kmeans'"):
        ume.upcycle(model(), 4, 2, moe=MoEConfig(router_init="kmeans"))
    with pytest.raises(UpcycleAnyError, match="moe.layers"):
        ume.upcycle(model(), 4, 2, moe=MoEConfig(layers="every_other"))
    with pytest.raises(UpcycleAnyError, match="moe.slots"):
        ume.upcycle(model(), 4, 2, moe=MoEConfig(slots=["decoder_ffn"]))
    with pytest.raises(UpcycleAnyError, match="experts per group"):
        ume.upcycle(model(), 4, 2, moe=MoEConfig(groups=4))
    with pytest.raises(ValueError, match="moe.groups=3"):
        ume.upcycle(model(), 6, 1, moe=MoEConfig(groups=3))  # 3 does not divide H = 32
    with pytest.raises(ValueError, match="router_init='kmeans'"):
        split_moe(
            nn.Linear(D, H), nn.Linear(H, D), 4, 2, moe_cfg=MoEConfig(4, 2, router_init="kmeans")
        )


@pytest.mark.parametrize("gradient", ["p", "log_p"])
def test_top1_gate_gradient_is_the_documented_one(gradient: str) -> None:
    """Value 1; d gate / d logits equals ∇p (default) or ∇log p, by finite differences."""
    cfg = MoEConfig(num_experts=4, top_k=1, router_init="normal", router_init_std=1.0)
    r = Router(D, cfg).double()
    if gradient != "p":
        r.top1_gradient = gradient
    x = torch.randn(5, D, dtype=torch.float64)
    logits = r.logits(x).double().detach().requires_grad_(True)
    experts, gates = r.select(logits)
    assert torch.equal(gates, torch.ones_like(gates))
    (grad,) = torch.autograd.grad(gates.sum(), logits)  # (5, E)
    eps = 1e-6
    numeric = torch.zeros_like(logits)
    for i in range(logits.size(0)):
        for j in range(logits.size(1)):
            lp, lm = logits.detach().clone(), logits.detach().clone()
            lp[i, j] += eps
            lm[i, j] -= eps
            e = experts[i, 0]
            fp, fm = lp[i].softmax(-1)[e], lm[i].softmax(-1)[e]  # p of the chosen expert
            if gradient == "log_p":
                fp, fm = fp.log(), fm.log()
            numeric[i, j] = (fp - fm) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    assert Router(D, cfg).top1_gradient == "p"  # the default


def test_split_backward_is_linear_in_experts() -> None:
    """Each stacked expert weight gets its gradient from ONE graph node (an unbind whose
    backward stacks the E per-expert gradients), not from E per-expert index nodes that each
    build a full (E, ·, ·) gradient (O(E²) work and memory)."""
    cfg = MoEConfig(num_experts=16, top_k=2, router_init="normal", router_init_std=1.0)
    _, entry, exit_ = _pair(cfg)
    y = _split_forward(entry, exit_, torch.randn(64, D))
    params = {id(p): n for n, p in [*entry.named_parameters(), *exit_.named_parameters()]}
    edges: dict[str, int] = {}
    seen, stack = set(), [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None and id(var) in params:
                edges[params[id(var)]] = edges.get(params[id(var)], 0) + 1
            stack.append(nxt)
    experts = {n: c for n, c in edges.items() if n in ("weight", "bias")}
    assert experts == {"weight": 2, "bias": 2}  # entry + exit: one edge each, any E


def test_split_deepcopy_and_layout_roundtrip(tmp_path) -> None:
    cfg = MoEConfig(groups=2, capacity_factor=1.5, router_noise=0.5, router_init="normal")
    model = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, D))
    ume.upcycle(model, 4, 1, moe=cfg)
    assert isinstance(copy.deepcopy(model)[0], MoEEntry)
    ume.save(model, tmp_path / "m")
    loaded = ume.load(tmp_path / "m", nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, D)))
    r = loaded[0].router
    assert (r.groups, r.cfg.capacity_factor, r.cfg.router_noise) == (2, 1.5, 0.5)
    x = torch.randn(3, D)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
