"""FFN slots: which feed-forward layers of the encoder and decoder become MoE. Every FFN is built
by `build_ffn`, so a dense `FeedForward` and an `MoEFeedForward` are interchangeable (same
constructor arguments, same `forward(x, valid)` signature).

Slot names: "encoder_macaron", "encoder_ffn" (per encoder block), "decoder_ffn" (per decoder
block, both directions). Layer specs: "all", "every_other", "top_half" or "0,2,4".

Example:
    >>> moe_layer_selected("every_other", 3, 12)
    True
    >>> build_ffn(144, 576, "swish", 0.0, "encoder_ffn", 0, 12, moe=None)  # dense
    FeedForward(...)
"""

from __future__ import annotations

from torch import nn

from ume.config import MoEConfig
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward

SLOTS = ("encoder_macaron", "encoder_ffn", "decoder_ffn")


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
        return MoEFeedForward(d_model, d_ff, activation, dropout, moe)
    return FeedForward(d_model, d_ff, activation, dropout)
