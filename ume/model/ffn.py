"""Feed-forward slots. Every FFN in the encoder and decoder is built by `build_ffn`, so a
dense `FeedForward` and an MoE layer are interchangeable (same constructor arguments, same
`forward(x, valid)` signature).

Slot names: "encoder_macaron", "encoder_ffn" (per encoder block), "decoder_ffn" (per decoder
block, both directions).

Example:
    >>> ffn = FeedForward(144, 576, activation="swish")
    >>> ffn(torch.randn(2, 10, 144)).shape
    torch.Size([2, 10, 144])
"""

from __future__ import annotations

import torch
from torch import nn

from ume.config import MoEConfig

SLOTS = ("encoder_macaron", "encoder_ffn", "decoder_ffn")


def activation_fn(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; use 'swish' or 'relu'")


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


def moe_layer_selected(spec: str, layer: int, num_layers: int) -> bool:
    """Whether block `layer` of `num_layers` gets MoE under a layer spec."""
    if spec == "all":
        return True
    if spec == "every_other":
        return layer % 2 == 1
    if spec == "top_half":
        return layer >= num_layers // 2
    try:
        chosen = {int(x) for x in spec.split(",") if x.strip()}
    except ValueError as e:
        raise ValueError(
            f"moe.layers={spec!r}: use all, every_other, top_half or a comma list like '0,2,4'"
        ) from e
    return layer in chosen


def is_moe_slot(moe: MoEConfig, slot: str, layer: int, num_layers: int) -> bool:
    if slot not in SLOTS:
        raise ValueError(f"unknown FFN slot {slot!r}; known slots: {SLOTS}")
    for s in moe.slots:
        if s not in SLOTS:
            raise ValueError(f"moe.slots has unknown slot {s!r}; known slots: {SLOTS}")
    return (
        moe.num_experts > 0
        and slot in moe.slots
        and moe_layer_selected(moe.layers, layer, num_layers)
    )


def build_ffn(
    d_model: int,
    d_ff: int,
    activation: str,
    dropout: float,
    slot: str,
    layer: int,
    num_layers: int,
    moe: MoEConfig | None = None,
) -> nn.Module:
    """Dense FeedForward, or MoEFeedForward where the MoE config selects this slot/layer."""
    if moe is not None and is_moe_slot(moe, slot, layer, num_layers):
        from ume.model.moe import MoEFeedForward

        return MoEFeedForward(d_model, d_ff, activation, dropout, moe)
    return FeedForward(d_model, d_ff, activation, dropout)
