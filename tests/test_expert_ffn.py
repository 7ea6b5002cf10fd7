"""The MoE graph path's expert FFN (custom backward) against autograd's own gradients."""

from __future__ import annotations

import pytest
import torch

from ume.config import MoEConfig
from ume.model.expert_ffn import expert_ffn
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions


def _weights(e: int, d: int, h: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(e, d, h), (e, h), (e, h, d), (e, d)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize("activation", ["swish", "relu"])
@pytest.mark.parametrize("p_drop", [0.0, 0.3])
def test_gradcheck(activation: str, p_drop: float) -> None:
    ws = _weights(3, 4, 6)
    xs = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    sizes = [3, 0, 4]  # an expert without rows

    def f(x, w_1, b_1, w_2, b_2):  # noqa: ANN001, ANN202
        torch.manual_seed(5)  # the same dropout mask in every call gradcheck makes
        return expert_ffn(x, sizes, w_1, b_1, w_2, b_2, activation, p_drop)

    assert torch.autograd.gradcheck(f, (xs, *ws))
    f(xs, *ws).sum().backward()
    assert torch.all(ws[0].grad[1] == 0) and torch.all(ws[3].grad[1] == 0)


def test_frozen_weights_get_no_gradient_and_input_grad_is_right() -> None:
    ws = [w.detach() for w in _weights(2, 3, 5)]
    xs = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: expert_ffn(x, [1, 3], *ws, activation="swish"), (xs,))
    with pytest.raises(ValueError, match="sum to 3"):
        expert_ffn(xs, [1, 2], *ws, activation="swish")


def test_moe_layer_gradients_match_the_autograd_path() -> None:
    """The layer's default graph path (expert_ffn) vs the padded-bmm path built from autograd
    ops: same output, same gradients for input, router and experts."""
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=4, top_k=2, router_init="normal", router_init_std=1.0)
    layers = [MoEFeedForward(8, 16, "swish", 0.0, cfg).train() for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    layers[1].dispatch_options = DispatchOptions(path="bmm")
    x = torch.randn(2, 9, 8)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    grads = []
    for layer in layers:
        xi = x.clone().requires_grad_(True)
        y = layer(xi, valid)
        (y.square().sum() + sum(layer.aux_losses.values())).backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
        grads[-1].append(y.detach())
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
