"""Chunk-by-chunk Conformer encoder with attention key/value and causal-convolution caches.

U2++ streaming: the encoder output frames are cut into chunks of `chunk_size` frames; frame i
of chunk q sees its own chunk and `left_chunks` chunks before it (-1: all of them). The
masked full-utterance encoder (`ConformerEncoder.forward(..., chunk_size, left_chunks)`)
computes exactly this with a chunk mask; `ChunkEncoder` computes the same outputs one chunk
at a time, carrying per block
    att_cache (H, T_cache, 2·d_k)  projected keys | values of the last left_chunks·chunk_size
                                   frames (all frames when left_chunks < 0)
    cnn_cache (D, K-1)             the last K-1 inputs of the causal depthwise conv
stacked over blocks as (N_blocks, H, T_cache, 2·d_k) and (N_blocks, D, K-1).

Subsampling: the conv stem has no padding, so output frame j depends on input frames
[j·rate, j·rate + min_in). Chunk q therefore takes input frames
    [q·stride, q·stride + window),  stride = chunk_size·rate,
                                    window = (chunk_size - 1)·rate + min_in
(chunk_size·rate frames plus min_in - rate context frames, 7 at rate 8); consecutive windows
overlap by the context. The last window may be shorter and gives fewer frames.

Everything in `ChunkEncoder.forward` is written without Python ints taken from tensor sizes,
so the same code is traced into the streaming ONNX graph (ume/decode/export.py).

Requires a causal convolution (`encoder.causal_conv: true`): a centred kernel looks into the
next chunk, which a stream does not have yet.

Example:
    >>> enc = ChunkEncoder(model, chunk_size=16, left_chunks=-1)
    >>> att, cnn = enc.init_cache()
    >>> out, att, cnn = enc(feats[:, : enc.window], att, cnn, torch.tensor([0]))  # (1, 16, D)
    >>> full = stream_encode(model, feats, 16)                    # (1, T', D), all chunks
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ume.errors import UmeError
from ume.model.attention import RelPositionAttention, sinusoid
from ume.model.conformer import ConformerBlock, ConvModule


def attention_chunk(
    att: RelPositionAttention,
    x: torch.Tensor,
    cache: torch.Tensor,
    keep: int,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of a chunk over cached keys/values plus its own.

    x (1, c, D) chunk queries; cache (H, Tc, 2·d_k) earlier keys | values; keep: how many
    frames the returned cache holds (-1: all). Returns out (1, c, D), cache (H, Tc', 2·d_k).
    Query a (absolute Tc + a) scores key b (absolute b) at distance Tc + a - b, as in the
    full-utterance RelPositionAttention. WeNet's variant (rel_shift=False) scores the absolute
    position of each key instead: offset (1,) is the absolute position of the chunk's first
    frame, so key b sits at offset - Tc + b."""
    q = att._heads(x, att.linear_q)  # (1, H, c, d_k)
    k = torch.cat([cache[..., : att.d_k].unsqueeze(0), att._heads(x, att.linear_k)], dim=2)
    v = torch.cat([cache[..., att.d_k :].unsqueeze(0), att._heads(x, att.linear_v)], dim=2)
    tk, c = k.size(2), q.size(2)  # (1, H, Tk, d_k) with Tk = Tc + c
    d_model = att.linear_pos.in_features
    if getattr(att, "use_rel_shift", True):
        rel = torch.arange(tk - 1, -c, -1, device=x.device)  # distances Tk-1 .. -(c-1): (Tk+c-1,)
    else:
        start = offset.reshape(()) - (tk - c)
        rel = torch.arange(tk, device=x.device) + start.to(x.device)  # absolute key positions (Tk,)
    pos = sinusoid(rel, d_model).unsqueeze(0).to(x.dtype)  # (1, Tk+c-1 | Tk, D)
    p = att.linear_pos(pos).view(1, -1, att.h, att.d_k).transpose(1, 2)  # (1, H, ·, d_k)
    q_u = q + att.pos_bias_u.unsqueeze(1).to(q.dtype)
    q_v = q + att.pos_bias_v.unsqueeze(1).to(q.dtype)
    ac = torch.matmul(q_u, k.transpose(-2, -1))  # (1, H, c, Tk)
    bd = torch.matmul(q_v, p.transpose(-2, -1))  # (1, H, c, Tk+c-1 | Tk)
    if getattr(att, "use_rel_shift", True):
        # distance Tc + a - b sits at column (Tk-1) - (Tc + a - b) = c - 1 - a + b
        a = torch.arange(c, device=x.device).unsqueeze(1)
        b = torch.arange(tk, device=x.device).unsqueeze(0)
        idx = (c - 1 - a + b).expand(1, att.h, c, tk)
        bd = torch.gather(bd, 3, idx)  # (1, H, c, Tk)
    scores = (ac + bd) / math.sqrt(att.d_k)
    mask = torch.ones_like(scores[0, :1, :1], dtype=torch.bool)  # (1, 1, Tk): all visible
    out = att._attend(scores, v, mask)  # (1, c, D)
    kv = torch.cat([k, v], dim=-1)[0]  # (H, Tk, 2·d_k)
    if keep == 0:
        kv = kv[:, :0]
    elif keep > 0:
        kv = kv[:, -keep:]  # clamps when fewer frames exist (also in ONNX Slice)
    return out, kv


def conv_chunk(
    conv: ConvModule, x: torch.Tensor, cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal conv module on a chunk: x (1, c, D), cache (D, K-1) -> (1, c, D), cache.

    The cache holds the depthwise conv's last K-1 inputs (after the GLU), or with WeNet's
    conv_context the last K-1 inputs of the first pointwise conv (its zero left padding)."""
    ctx = conv.left_pad
    h = x.transpose(1, 2)  # (1, D, c)
    if getattr(conv, "context", "zeros") == "wenet":
        h = torch.cat([cache.unsqueeze(0), h], dim=2)  # (1, D, K-1+c)
        new_cache = h[0, :, -ctx:] if ctx > 0 else h[0, :, :0]
        h = F.glu(conv.pw1(h), dim=1)
    else:
        h = torch.cat([cache.unsqueeze(0), F.glu(conv.pw1(h), dim=1)], dim=2)  # (1, D, K-1+c)
        new_cache = h[0, :, -ctx:] if ctx > 0 else h[0, :, :0]  # (D, K-1)
    h = conv.dw(h)  # (1, D, c)
    if getattr(conv, "batch_norm", False):
        h = conv.act(conv.norm(h))
    else:
        h = conv.act(conv.norm(h.transpose(1, 2))).transpose(1, 2)
    return conv.pw2(h).transpose(1, 2), new_cache  # (1, c, D)


def block_chunk(
    block: ConformerBlock,
    x: torch.Tensor,
    att_cache: torch.Tensor,
    cnn_cache: torch.Tensor,
    keep: int,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ConformerBlock.forward (eval) for one chunk x (1, c, D) with its caches."""
    valid = torch.ones_like(x[..., 0], dtype=torch.bool)  # (1, c): MoE layers route all frames
    if block.macaron:
        x = x + block.ff_scale * block.ffn_macaron(block.norm_ff_macaron(x), valid)
    a, att_cache = attention_chunk(block.self_attn, block.norm_mha(x), att_cache, keep, offset)
    x = x + a
    c, cnn_cache = conv_chunk(block.conv, block.norm_conv(x), cnn_cache)
    x = x + c
    x = x + block.ff_scale * block.ffn(block.norm_ff(x), valid)
    return block.norm_final(x), att_cache, cnn_cache


class ChunkEncoder(nn.Module):
    """ASRModel's CMVN + encoder, one chunk at a time (see the module docstring).

    forward(feats (1, W, F) raw fbank window, att_cache (N, H, Tc, 2·d_k), cnn_cache (N, D, K-1),
            offset (1,) int64: encoder frames before this chunk)
    -> encoder out (1, c, D), new att_cache, new cnn_cache; c = chunk_size for a full window.
    """

    def __init__(self, model: nn.Module, chunk_size: int, left_chunks: int = -1) -> None:
        super().__init__()
        if chunk_size <= 0:
            raise UmeError(f"streaming needs a chunk size > 0 (got {chunk_size})")
        enc = model.encoder
        if not enc.cfg.causal_conv:
            raise UmeError(
                "streaming needs a causal convolution (encoder.causal_conv: true): this model's "
                "centred conv kernel looks into the next chunk; decode it with masked chunks "
                "(`ume decode --chunk-size N`) instead"
            )
        self.model = model
        self.chunk_size = chunk_size
        self.left_chunks = left_chunks
        self.keep = left_chunks * chunk_size if left_chunks >= 0 else -1
        rate = enc.embed.rate
        self.stride = chunk_size * rate  # input frames per chunk
        self.min_input = enc.embed.min_input_frames()
        self.window = (chunk_size - 1) * rate + self.min_input  # input frames a chunk needs
        cfg = enc.cfg
        self.num_blocks, self.heads = cfg.num_blocks, cfg.num_heads
        self.d_k = cfg.d_model // cfg.num_heads
        self.d_model, self.conv_ctx = cfg.d_model, enc.blocks[0].conv.left_pad

    def init_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty attention cache (N, H, 0, 2·d_k) and zero conv cache (N, D, K-1)."""
        p = next(self.model.parameters())
        att = p.new_zeros(self.num_blocks, self.heads, 0, 2 * self.d_k)
        cnn = p.new_zeros(self.num_blocks, self.d_model, self.conv_ctx)
        return att, cnn

    def forward(
        self,
        feats: torch.Tensor,
        att_cache: torch.Tensor,
        cnn_cache: torch.Tensor,
        offset: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, enc = self.model, self.model.encoder
        x = (feats - m.cmvn_mean) * m.cmvn_istd  # (1, W, F)
        x, _ = enc.embed(
            x, torch.zeros(1, dtype=torch.long, device=x.device)
        )  # (1, c, D); lengths unused
        new_att, new_cnn = [], []
        for i, block in enumerate(enc.blocks):
            x, a, c = block_chunk(block, x, att_cache[i], cnn_cache[i], self.keep, offset)
            new_att.append(a)
            new_cnn.append(c)
        if enc.after_norm is not None:
            x = enc.after_norm(x)
        return x, torch.stack(new_att), torch.stack(new_cnn)

    def windows(self, num_frames: int) -> list[tuple[int, int]]:
        """(start, end) input-frame windows of an utterance of num_frames, chunk by chunk."""
        out = []
        start = 0
        while num_frames - start >= self.min_input:
            out.append((start, min(start + self.window, num_frames)))
            start += self.stride
        return out


@torch.no_grad()
def stream_encode(
    model: nn.Module, feats: torch.Tensor, chunk_size: int, left_chunks: int = -1
) -> torch.Tensor:
    """Whole utterance feats (1, T, F) fed chunk by chunk -> encoder out (1, T', D): equal
    (within float rounding) to model.encode(feats, lens, chunk_size, left_chunks)[0]."""
    enc = ChunkEncoder(model, chunk_size, left_chunks)
    att, cnn = enc.init_cache()
    outs = []
    done = 0
    for s, e in enc.windows(feats.size(1)):
        out, att, cnn = enc(feats[:, s:e], att, cnn, torch.tensor([done], device=feats.device))
        outs.append(out)
        done += out.size(1)
    if not outs:
        return feats.new_zeros(1, 0, model.encoder.cfg.d_model)
    return torch.cat(outs, dim=1)
