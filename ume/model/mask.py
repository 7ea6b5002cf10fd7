"""Padding and chunk masks. Convention: boolean masks, True = position may be used.

Example:
    >>> make_valid_mask(torch.tensor([2, 3]))
    tensor([[ True,  True, False],
            [ True,  True,  True]])
"""

from __future__ import annotations

import torch


def make_valid_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames."""
    max_len = max(max_len, int(lengths.max().item()) if lengths.numel() else 0)
    idx = torch.arange(max_len, device=lengths.device)
    return idx.unsqueeze(0) < lengths.unsqueeze(1)


def chunk_attention_mask(
    size: int, chunk_size: int, left_chunks: int = -1, device: torch.device | None = None
) -> torch.Tensor:
    """(T, T) bool: frame i sees frames of its own chunk and `left_chunks` chunks before it.

    chunk_size <= 0 means full context; left_chunks < 0 means all previous chunks.
    """
    if chunk_size <= 0:
        return torch.ones(size, size, dtype=torch.bool, device=device)
    pos = torch.arange(size, device=device)
    chunk_idx = pos // chunk_size  # (T,)
    q = chunk_idx.unsqueeze(1)  # (T, 1)
    k = chunk_idx.unsqueeze(0)  # (1, T)
    mask = k <= q
    if left_chunks >= 0:
        mask &= k >= q - left_chunks
    return mask


def encoder_attention_mask(
    valid: torch.Tensor, chunk_size: int = 0, left_chunks: int = -1
) -> torch.Tensor:
    """Combine padding (B, T) with a chunk mask -> (B, T, T) bool for self-attention."""
    t = valid.size(1)
    chunk = chunk_attention_mask(t, chunk_size, left_chunks, valid.device)  # (T, T)
    return valid.unsqueeze(1) & chunk.unsqueeze(0)  # (B, T, T)


def causal_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(L, L) lower-triangular bool mask for autoregressive decoding."""
    return torch.tril(torch.ones(size, size, dtype=torch.bool, device=device))
