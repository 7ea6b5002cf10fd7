"""Conformer encoder (Gulati et al., 2020) with dynamic-chunk masks for U2++ streaming.

Block: x += ½·FFN_macaron(LN x); x += RelPosMHSA(LN x); x += Conv(LN x); x += ½·FFN(LN x); LN.
All FFNs come from `build_ffn`, so MoE layers slot in without touching this file.

Example:
    >>> enc = ConformerEncoder(EncoderConfig(), MoEConfig())
    >>> out, valid = enc(torch.randn(2, 400, 80), torch.tensor([400, 300]))
    >>> out.shape, valid.shape  # x8 subsampling
    (torch.Size([2, 49, 144]), torch.Size([2, 49]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ume.config import EncoderConfig, MoEConfig
from ume.errors import UmeError
from ume.model.attention import AbsPositionalEncoding, RelPositionalEncoding, RelPositionAttention
from ume.model.mask import encoder_attention_mask, make_valid_mask
from ume.model.slots import build_ffn

# (kernel, stride) of each conv in the subsampling stem, per total rate
_STEMS = {4: [(3, 2), (3, 2)], 6: [(3, 2), (5, 3)], 8: [(3, 2), (3, 2), (3, 2)]}


class ConvSubsampling(nn.Module):
    """Conv2d stem: (B, T, F) -> (B, T', D) with T' ≈ T / rate (rate 4, 6 or 8)."""

    def __init__(self, input_dim: int, d_model: int, rate: int, channels: int = 0) -> None:
        super().__init__()
        if rate not in _STEMS:
            raise UmeError(f"subsampling rate {rate} not supported; use one of {list(_STEMS)}")
        channels = channels or d_model
        self.layers = _STEMS[rate]
        convs: list[nn.Module] = []
        c_in, f = 1, input_dim
        for k, s in self.layers:
            convs += [nn.Conv2d(c_in, channels, k, s), nn.ReLU()]
            c_in, f = channels, (f - k) // s + 1
        self.conv = nn.Sequential(*convs)
        self.out = nn.Linear(channels * f, d_model)
        self.rate = rate
        self.scale = math.sqrt(d_model)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for k, s in self.layers:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def min_input_frames(self) -> int:
        """Smallest input length that yields one output frame."""
        n = 1
        for k, s in reversed(self.layers):
            n = (n - 1) * s + k
        return n

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f)) * self.scale  # (B, T', D)
        return x, self.output_lengths(lengths)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (causal if asked), norm, Swish, pointwise.

    norm: "layer_norm" or "batch_norm"; context: what the depthwise conv sees outside the valid
    frames, "zeros" or "wenet" (see EncoderConfig.conv_context).
    """

    def __init__(
        self,
        d_model: int,
        kernel: int,
        causal: bool,
        norm: str = "layer_norm",
        context: str = "zeros",
    ) -> None:
        super().__init__()
        if norm not in ("layer_norm", "batch_norm"):
            raise UmeError(f"encoder.conv_norm={norm!r}: use 'layer_norm' or 'batch_norm'")
        if context not in ("zeros", "wenet"):
            raise UmeError(f"encoder.conv_context={context!r}: use 'zeros' or 'wenet'")
        self.pw1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.causal = causal
        self.context = context
        self.batch_norm = norm == "batch_norm"
        self.left_pad = kernel - 1 if causal else (kernel - 1) // 2
        self.right_pad = 0 if causal else (kernel - 1) // 2
        if not causal and kernel % 2 == 0:
            raise UmeError("non-causal conv_kernel must be odd")
        self.dw = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.norm = nn.BatchNorm1d(d_model) if self.batch_norm else nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pw2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # x (B, T, D), valid (B, T)
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0).transpose(1, 2)  # (B, D, T)
        if self.context == "wenet" and self.causal:
            # WeNet: left context zero-padded before pw1, so it holds GLU(pw1 bias)
            x = nn.functional.pad(x, (self.left_pad, 0))  # (B, D, k-1+T)
            x = self.dw(nn.functional.glu(self.pw1(x), dim=1))  # (B, D, T)
        else:
            x = nn.functional.glu(self.pw1(x), dim=1)
            if self.context == "zeros":  # pw1 bias re-fills padding: clear it again
                x = x.masked_fill(~valid.unsqueeze(1), 0.0)
            x = nn.functional.pad(x, (self.left_pad, self.right_pad))
            x = self.dw(x)  # (B, D, T)
        if self.batch_norm:
            x = self.act(self.norm(x))  # (B, D, T)
        else:
            x = self.act(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pw2(x).transpose(1, 2)  # (B, T, D)
        return x.masked_fill(~valid.unsqueeze(-1), 0.0)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig, moe: MoEConfig, layer: int) -> None:
        super().__init__()
        d, n = cfg.d_model, cfg.num_blocks
        self.macaron = cfg.macaron
        if cfg.macaron:
            self.norm_ff_macaron = nn.LayerNorm(d)
            self.ffn_macaron = build_ffn(
                d, cfg.d_ff, "swish", cfg.dropout, "encoder_macaron", layer, n, moe
            )
        self.norm_mha = nn.LayerNorm(d)
        if cfg.pos_enc not in ("rel_shift", "wenet"):
            raise UmeError(f"encoder.pos_enc={cfg.pos_enc!r}: use 'rel_shift' or 'wenet'")
        self.self_attn = RelPositionAttention(
            d, cfg.num_heads, cfg.attn_dropout, rel_shift=cfg.pos_enc == "rel_shift"
        )
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.causal_conv, cfg.conv_norm, cfg.conv_context)
        self.norm_ff = nn.LayerNorm(d)
        self.ffn = build_ffn(d, cfg.d_ff, "swish", cfg.dropout, "encoder_ffn", layer, n, moe)
        if cfg.final_norm not in ("block", "encoder", "both"):
            raise UmeError(
                f"encoder.final_norm={cfg.final_norm!r}: use 'block', 'encoder' or 'both'"
            )
        self.norm_final = nn.LayerNorm(d) if cfg.final_norm != "encoder" else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.ff_scale = 0.5 if cfg.macaron else 1.0

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, att_mask: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        # x (B, T, D); valid (B, T); att_mask (B, T, T); pos (1, 2T-1, D)
        if self.macaron:
            x = x + self.ff_scale * self.dropout(self.ffn_macaron(self.norm_ff_macaron(x), valid))
        h = self.norm_mha(x)
        x = x + self.dropout(self.self_attn(h, h, h, att_mask, pos))
        x = x + self.dropout(self.conv(self.norm_conv(x), valid))
        x = x + self.ff_scale * self.dropout(self.ffn(self.norm_ff(x), valid))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """Subsampling stem + Conformer blocks. Returns (B, T', D) outputs and (B, T') valid mask."""

    def __init__(self, cfg: EncoderConfig, moe: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = ConvSubsampling(
            cfg.input_dim, cfg.d_model, cfg.subsampling, cfg.subsampling_channels
        )
        pos_cls = AbsPositionalEncoding if cfg.pos_enc == "wenet" else RelPositionalEncoding
        self.pos_enc = pos_cls(cfg.d_model, cfg.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(cfg, moe, i) for i in range(cfg.num_blocks))
        self.after_norm = nn.LayerNorm(cfg.d_model) if cfg.final_norm != "block" else None

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        chunk_size: int = 0,
        left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F) normalised fbank; chunk_size in output frames (0 = full context)."""
        x, lens = self.embed(feats, feat_lens)  # (B, T', D)
        valid = make_valid_mask(lens, x.size(1))  # (B, T')
        att_mask = encoder_attention_mask(valid, chunk_size, left_chunks)  # (B, T', T')
        pos = self.pos_enc(x.size(1), x.device).to(x.dtype)  # (1, 2T'-1, D) or (1, T', D)
        for block in self.blocks:
            x = block(x, valid, att_mask, pos)
        if self.after_norm is not None:
            x = self.after_norm(x)
        return x, valid
