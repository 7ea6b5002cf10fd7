"""Multi-head attention: plain (decoder) and relative-position (Conformer encoder).

The relative-position variant follows Transformer-XL (Dai et al., 2019): the score of query i
on key j is (q_i + u)·k_j + (q_i + v)·p_{i-j}, where p_r is a projected sinusoidal encoding of
the relative distance r and u, v are learned per-head biases. WeNet's variant (pos_enc "wenet",
for imported WeNet models) scores (q_i + v)·p_j with p_j the encoding of the absolute position j
(no rel_shift): `AbsPositionalEncoding` + `RelPositionAttention(rel_shift=False)`.

Example:
    >>> att = RelPositionAttention(d_model=144, num_heads=4)
    >>> x = torch.randn(2, 50, 144); pos = RelPositionalEncoding(144)(50)
    >>> att(x, x, x, torch.ones(2, 50, 50, dtype=torch.bool), pos).shape
    torch.Size([2, 50, 144])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ume.errors import UmeError


def sinusoid(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """(N,) positions -> (N, D) float32 encodings: column 2i is sin(p / 10000^(2i/D)), column
    2i+1 its cos. The one sinusoid of the model (encoder, decoder, streaming). Built without
    slice writes or Python ints taken from tensor sizes, so that a traced graph (ONNX export of
    the streaming encoder) keeps N symbolic."""
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
        * (-math.log(10000.0) / d_model)
    )  # (D/2,)
    ang = positions.float().unsqueeze(1) * div  # (N, D/2)
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(1)  # (N, D)


class RelPositionalEncoding(nn.Module):
    """Encodings for relative distances T-1, T-2, ..., -(T-1): returns (1, 2T-1, D)."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)

    def forward(self, size: int, device: torch.device | None = None) -> torch.Tensor:
        rel = torch.arange(size - 1, -size, -1, device=device)  # (2T-1,)
        return self.dropout(sinusoid(rel, self.d_model).unsqueeze(0))  # (1, 2T-1, D)


class AbsPositionalEncoding(nn.Module):
    """Encodings of absolute positions 0, 1, ..., T-1: returns (1, T, D) (WeNet's rel_pos)."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)

    def forward(self, size: int, device: torch.device | None = None) -> torch.Tensor:
        pos = torch.arange(size, device=device)  # (T,)
        return self.dropout(sinusoid(pos, self.d_model).unsqueeze(0))  # (1, T, D)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with a boolean mask (True = may attend)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise UmeError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.h = num_heads
        self.d_k = d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
        b, t, _ = x.shape
        return lin(x).view(b, t, self.h, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def _attend(self, scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # scores (B, H, Tq, Tk); mask (B, Tq|1, Tk)
        m = mask.unsqueeze(1)  # (B, 1, Tq|1, Tk)
        scores = scores.masked_fill(~m, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        # rows with no visible key (fully padded queries) give NaN -> zero them
        attn = attn.masked_fill(~m, 0.0)
        out = torch.matmul(self.dropout(attn), v)  # (B, H, Tq, d_k)
        b, _, t, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        q = self._heads(query, self.linear_q)
        k = self._heads(key, self.linear_k)
        v = self._heads(value, self.linear_v)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self._attend(scores, v, mask)


class RelPositionAttention(MultiHeadAttention):
    """Self-attention with Transformer-XL relative positions (see module docstring).

    rel_shift=False is WeNet's variant: pos_emb holds T absolute positions and the position
    scores are used as they are.
    """

    def __init__(
        self, d_model: int, num_heads: int, dropout: float = 0.0, rel_shift: bool = True
    ) -> None:
        super().__init__(d_model, num_heads, dropout)
        self.use_rel_shift = rel_shift
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, 2T-1) scores over distances T-1..-(T-1) -> (B, H, T, T) with out[i, j]
        taken at distance i-j, i.e. column (T-1) - i + j."""
        b, h, t, _ = x.shape
        i = torch.arange(t, device=x.device).unsqueeze(1)
        j = torch.arange(t, device=x.device).unsqueeze(0)
        idx = (t - 1 - i + j).expand(b, h, t, t)
        return torch.gather(x, 3, idx)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor,
        pos_emb: torch.Tensor,
    ) -> torch.Tensor:
        q = self._heads(query, self.linear_q)  # (B, H, T, d_k)
        k = self._heads(key, self.linear_k)
        v = self._heads(value, self.linear_v)
        # (1, H, 2T-1, d_k) distances, or (1, H, T, d_k) absolute positions without rel_shift
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)
        q_u = q + self.pos_bias_u.unsqueeze(1).to(q.dtype)  # (B, H, T, d_k)
        q_v = q + self.pos_bias_v.unsqueeze(1).to(q.dtype)
        ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, H, T, T)
        bd = torch.matmul(q_v, p.transpose(-2, -1))  # (B, H, T, 2T-1) or (B, H, T, T)
        if self.use_rel_shift:
            bd = self.rel_shift(bd)  # (B, H, T, T)
        scores = (ac + bd) / math.sqrt(self.d_k)
        return self._attend(scores, v, mask)
