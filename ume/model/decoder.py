"""Bidirectional attention decoder (U2++): a left-to-right and a right-to-left Transformer
decoder over the encoder output. Each block's FFN comes from `build_ffn` (slot "decoder_ffn").

Example:
    >>> dec = BiTransformerDecoder(vocab=100, d_model=144, cfg=DecoderConfig(), moe=MoEConfig())
    >>> mem = torch.randn(2, 30, 144); mem_valid = torch.ones(2, 30, dtype=torch.bool)
    >>> ys = torch.randint(0, 100, (2, 7)); lens = torch.tensor([7, 5])
    >>> l2r, r2l = dec(mem, mem_valid, ys, lens, ys)
    >>> l2r.shape
    torch.Size([2, 7, 100])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ume.config import DecoderConfig, MoEConfig
from ume.model.attention import MultiHeadAttention, sinusoid
from ume.model.mask import causal_mask, make_valid_mask
from ume.model.slots import build_ffn


class DecoderBlock(nn.Module):
    def __init__(self, d: int, cfg: DecoderConfig, moe: MoEConfig, layer: int, n: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.src_attn = MultiHeadAttention(d, cfg.num_heads, cfg.dropout)
        self.norm3 = nn.LayerNorm(d)
        self.ffn = build_ffn(d, cfg.d_ff, "relu", cfg.dropout, "decoder_ffn", layer, n, moe)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        tgt_mask: torch.Tensor,
        tgt_valid: torch.Tensor,
        memory: torch.Tensor,
        mem_mask: torch.Tensor,
    ) -> torch.Tensor:
        # x (B, L, D); tgt_mask (B, L, L); tgt_valid (B, L); memory (B, T, D); mem_mask (B, 1, T)
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, tgt_mask))
        h = self.norm2(x)
        x = x + self.dropout(self.src_attn(h, memory, memory, mem_mask))
        return x + self.dropout(self.ffn(self.norm3(x), tgt_valid))


class TransformerDecoder(nn.Module):
    """One direction: token embedding + sinusoidal positions, N blocks, LN, output projection."""

    def __init__(self, vocab: int, d: int, cfg: DecoderConfig, moe: MoEConfig, n: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.scale = math.sqrt(d)
        self.d_model = d
        self.blocks = nn.ModuleList(DecoderBlock(d, cfg, moe, i, n) for i in range(n))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(
        self,
        memory: torch.Tensor,
        mem_valid: torch.Tensor,
        ys_in: torch.Tensor,
        ys_lens: torch.Tensor,
    ) -> torch.Tensor:
        """ys_in (B, L) starting with <sos>; returns logits (B, L, V)."""
        length = ys_in.size(1)
        tgt_valid = make_valid_mask(ys_lens, length)  # (B, L)
        tgt_mask = tgt_valid.unsqueeze(1) & causal_mask(length, ys_in.device).unsqueeze(0)
        pos = sinusoid(torch.arange(length, device=ys_in.device), self.d_model)  # (L, D)
        x = self.embed(ys_in) * self.scale + pos.to(memory.dtype)
        mem_mask = mem_valid.unsqueeze(1)  # (B, 1, T)
        for block in self.blocks:
            x = block(x, tgt_mask, tgt_valid, memory, mem_mask)
        return self.out(self.norm(x))


class BiTransformerDecoder(nn.Module):
    """Left-to-right decoder plus an optional right-to-left one (r_num_blocks > 0)."""

    def __init__(self, vocab: int, d_model: int, cfg: DecoderConfig, moe: MoEConfig) -> None:
        super().__init__()
        self.left = TransformerDecoder(vocab, d_model, cfg, moe, cfg.num_blocks)
        self.right = (
            TransformerDecoder(vocab, d_model, cfg, moe, cfg.r_num_blocks)
            if cfg.r_num_blocks > 0
            else None
        )

    def forward(
        self,
        memory: torch.Tensor,
        mem_valid: torch.Tensor,
        ys_in: torch.Tensor,
        ys_lens: torch.Tensor,
        r_ys_in: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (l2r logits (B, L, V), r2l logits (B, L, V) or None)."""
        l2r = self.left(memory, mem_valid, ys_in, ys_lens)
        r2l = None
        if self.right is not None and r_ys_in is not None:
            r2l = self.right(memory, mem_valid, r_ys_in, ys_lens)
        return l2r, r2l
