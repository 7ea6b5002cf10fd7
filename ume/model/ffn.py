"""The dense position-wise feed-forward layer and its activations. `ume.model.slots.build_ffn`
chooses between this layer and an MoE layer per slot; both share the constructor arguments and
the `forward(x, valid)` signature.

Example:
    >>> ffn = FeedForward(144, 576, activation="swish")
    >>> ffn(torch.randn(2, 10, 144)).shape
    torch.Size([2, 10, 144])
"""

from __future__ import annotations

import torch
from torch import nn

from ume.errors import UmeError


def activation_fn(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise UmeError(f"unknown activation {name!r}; use 'swish' or 'relu'")


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, H) -> activation -> dropout -> Linear(H, D)."""

    def __init__(
        self, d_model: int, d_ff: int, activation: str = "swish", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.act = activation_fn(activation)
        self.dropout = nn.Dropout(dropout)
        self.w_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), valid (B, T) bool or None (unused by the dense layer) -> (B, T, D)."""
        return self.w_2(self.dropout(self.act(self.w_1(x))))
