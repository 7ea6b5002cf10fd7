"""Training targets: each utterance's token ids, keeping only the utterances CTC can align.

CTC needs at least one output frame per token, so an utterance whose transcript has more
tokens than its encoder frames (after subsampling), or no token at all, cannot be trained on:
it is left out and named in the store's `skipped` list (written to EXPDIR/skipped.txt), never
silently dropped.

Example:
    >>> keep, tokens = ctc_targets(store, tokenizer, model.encoder.embed, subsampling=4)
    >>> store.utts[keep[0]].text, tokens[0]
"""

from __future__ import annotations

import torch

from ume.data.loader import FeatureStore
from ume.data.tokenizer import Tokenizer
from ume.model.conformer import ConvSubsampling


def ctc_targets(
    store: FeatureStore, tokenizer: Tokenizer, embed: ConvSubsampling, subsampling: int
) -> tuple[list[int], list[list[int]]]:
    """(indices into store.utts that train, their token ids, in the same order). Each left-out
    utterance appends "KEY: N tokens for F encoder frames (xS); too short for CTC" to
    store.skipped; `subsampling` (S) only names the rate in that message."""
    keep: list[int] = []
    tokens: list[list[int]] = []
    for i, u in enumerate(store.utts):
        ids = tokenizer.encode(u.text)
        frames = int(embed.output_lengths(torch.tensor(store.lengths[i])))
        if not ids or len(ids) > frames:
            store.skipped.append(
                f"{u.key}: {len(ids)} tokens for {frames} encoder frames (x{subsampling}); "
                "too short for CTC"
            )
            continue
        keep.append(i)
        tokens.append(ids)
    return keep, tokens
