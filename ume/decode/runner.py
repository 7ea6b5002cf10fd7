"""Decode a whole data set: batches by length, runs a search mode, returns key -> text.

Example:
    >>> hyps = decode_store(model, store, tokenizer, mode="ctc_greedy")
    >>> write_text_file(hyps, "exp/hyp.txt")
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ume.data.loader import BucketSampler, FeatureStore
from ume.data.tokenizer import Tokenizer
from ume.decode.search import decode_batch
from ume.model.asr import ASRModel


@torch.inference_mode()
def decode_store(
    model: ASRModel,
    store: FeatureStore,
    tokenizer: Tokenizer,
    mode: str = "attention_rescoring",
    beam: int = 10,
    chunk_size: int = 0,
    left_chunks: int = -1,
    max_frames: int = 30000,
    max_batch: int = 32,
    indices: list[int] | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Decode utterances of `store` (all, or `indices`) -> {key: normalised text}."""
    was_training = model.training
    model.eval()
    device = model.cmvn_mean.device  # decode where the model is (cpu or cuda)
    idx = list(range(len(store))) if indices is None else list(indices)
    lengths = [store.lengths[i] for i in idx]
    sampler = BucketSampler(lengths, max_frames, max_batch, seed=0)
    hyps: dict[str, str] = {}
    batches = sampler.epoch_batches(0, sorted_order=True)
    for batch in tqdm(batches, desc=f"decode {mode}", disable=not progress, unit="batch"):
        real = [idx[i] for i in batch]
        feats, lens = store.collate(real)
        feats, lens = feats.to(device), lens.to(device)  # (B, T, F), (B,)
        out = decode_batch(model, feats, lens, mode, beam, chunk_size, left_chunks)
        for i, ids in zip(real, out):
            hyps[store.utts[i].key] = tokenizer.decode(ids)
    model.train(was_training)
    return hyps


def references(store: FeatureStore, indices: list[int] | None = None) -> dict[str, str]:
    idx = range(len(store)) if indices is None else indices
    return {store.utts[i].key: store.utts[i].text for i in idx}
