"""Search: CTC greedy, CTC prefix beam, attention beam search, attention rescoring.

Streaming is the same searches over an encoder run with a chunk mask (chunk_size > 0): each
output frame sees only its own chunk and earlier ones (plus the conv stem's 7-frame lookahead),
which is what chunk-by-chunk decoding with caches computes.

Example:
    >>> hyps = decode_batch(model, feats, feat_lens, mode="attention_rescoring", beam=10)
    >>> hyps[0]   # token ids
    [523, 17, 88]
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ume.errors import UmeError
from ume.model.asr import ASRModel

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention", "attention_rescoring")
NEG_INF = -float("inf")


def log_add(*xs: float) -> float:
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ctc_greedy(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """log_probs (B, T, V), lens (B,) -> best path with repeats merged and blanks removed."""
    best = log_probs.argmax(-1)  # (B, T)
    out = []
    for b in range(best.size(0)):
        seq = best[b, : lens[b]].tolist()
        hyp, prev = [], blank
        for s in seq:
            if s != prev and s != blank:
                hyp.append(s)
            prev = s
        out.append(hyp)
    return out


Beams = dict[tuple[int, ...], tuple[float, float]]  # prefix -> (log p blank-ending, non-blank)


def prefix_beam_step(beams: Beams, frame: torch.Tensor, beam: int = 10, blank: int = 0) -> Beams:
    """One frame of CTC prefix beam search: beams, frame (V,) log-probs -> the `beam` best
    prefixes after it. Streaming decoding calls this frame by frame as chunks arrive."""
    top_v, top_i = frame.topk(min(beam, frame.numel()))
    nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
    for lp, s in zip(top_v.tolist(), top_i.tolist()):
        for prefix, (pb, pnb) in beams.items():
            if s == blank:
                e = nxt[prefix]
                e[0] = log_add(e[0], pb + lp, pnb + lp)
                continue
            last = prefix[-1] if prefix else None
            ext = prefix + (s,)
            e = nxt[ext]
            if s == last:
                # repeat: only a blank in between starts a new token
                e[1] = log_add(e[1], pb + lp)
                same = nxt[prefix]
                same[1] = log_add(same[1], pnb + lp)
            else:
                e[1] = log_add(e[1], pb + lp, pnb + lp)
    alive = ((k, v) for k, v in nxt.items() if max(v) > NEG_INF)
    ranked = sorted(alive, key=lambda kv: log_add(*kv[1]), reverse=True)[:beam]
    return {k: (v[0], v[1]) for k, v in ranked}


def nbest_of(beams: Beams) -> list[tuple[tuple[int, ...], float]]:
    """Beams -> [(prefix, log score)] sorted best first."""
    return sorted(((k, log_add(*v)) for k, v in beams.items()), key=lambda kv: kv[1], reverse=True)


def ctc_prefix_beam(
    log_probs: torch.Tensor, beam: int = 10, blank: int = 0
) -> list[tuple[tuple[int, ...], float]]:
    """One utterance: log_probs (T, V) -> n-best [(prefix, log score)] sorted best first.

    Each prefix keeps two scores: ending in blank (pb) and ending in a non-blank (pnb).
    Only the `beam` most likely tokens of each frame are expanded.
    """
    beams: Beams = {(): (0.0, NEG_INF)}
    for t in range(log_probs.size(0)):
        beams = prefix_beam_step(beams, log_probs[t], beam, blank)
    return nbest_of(beams)


@torch.inference_mode()
def attention_beam(
    model: ASRModel, enc: torch.Tensor, valid: torch.Tensor, beam: int = 10, max_len: int = 0
) -> list[int]:
    """Left-to-right autoregressive beam search for one utterance. enc (1, T, D)."""
    sos, eos = model.sos, model.eos
    n_frames = int(valid.sum())
    max_len = max_len or max(4, n_frames * 2)
    mem = enc[:, :n_frames]  # (1, T, D)
    hyps: list[tuple[list[int], float]] = [([sos], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        k = len(hyps)
        dev = mem.device
        ys = torch.tensor([h for h, _ in hyps], dtype=torch.long, device=dev)  # (k, L)
        lens = torch.full((k,), ys.size(1), dtype=torch.long, device=dev)
        logits = model.decoder.left(
            mem.expand(k, -1, -1), torch.ones(k, n_frames, dtype=torch.bool, device=dev), ys, lens
        )
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (k, V)
        scores = torch.tensor([s for _, s in hyps], device=dev).unsqueeze(1) + logp  # (k, V)
        top_v, top_i = scores.view(-1).topk(min(beam, scores.numel()))
        new = []
        for v, i in zip(top_v.tolist(), top_i.tolist()):
            h, tok = divmod(i, logp.size(1))
            seq = hyps[h][0] + [tok]
            (finished if tok == eos else new).append((seq, v))
        hyps = new[:beam]
        if not hyps or (finished and max(s for _, s in finished) > hyps[0][1]):
            break
    pool = finished or hyps
    best = max(pool, key=lambda x: x[1])[0]
    return [t for t in best[1:] if t != eos]


@torch.inference_mode()
def rescore(
    model: ASRModel,
    enc: torch.Tensor,
    valid: torch.Tensor,
    nbest: list[tuple[tuple[int, ...], float]],
    ctc_weight: float = 0.5,
    reverse_weight: float | None = None,
) -> list[int]:
    """Attention rescoring for one utterance: pick the CTC n-best hypothesis with the best
    ctc_weight·CTC + (1-rw)·L2R + rw·R2L score. enc (1, T, D)."""
    if not nbest:
        return []
    rw = model.cfg.reverse_weight if reverse_weight is None else reverse_weight
    if model.decoder.right is None:
        rw = 0.0
    sos, eos = model.sos, model.eos
    n = len(nbest)
    n_frames = int(valid.sum())
    mem = enc[:, :n_frames].expand(n, -1, -1)
    dev = enc.device
    mem_valid = torch.ones(n, n_frames, dtype=torch.bool, device=dev)
    seqs = [list(h) for h, _ in nbest]
    lens = torch.tensor([len(s) + 1 for s in seqs], device=dev)
    width = int(lens.max())

    def pad(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(
            [r + [eos] * (width - len(r)) for r in rows], dtype=torch.long, device=dev
        )

    ys_in = pad([[sos] + s for s in seqs])
    r_ys_in = pad([[sos] + s[::-1] for s in seqs])
    l2r, r2l = model.decoder(mem, mem_valid, ys_in, lens, r_ys_in if rw > 0 else None)

    def seq_score(logits: torch.Tensor, rows: list[list[int]]) -> list[float]:
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for i, r in enumerate(rows):
            tgt = r + [eos]
            out.append(float(lp[i, torch.arange(len(tgt)), torch.tensor(tgt)].sum()))
        return out

    att = seq_score(l2r, seqs)
    if rw > 0 and r2l is not None:
        r_att = seq_score(r2l, [s[::-1] for s in seqs])
        att = [(1 - rw) * a + rw * r for a, r in zip(att, r_att)]
    total = [a + ctc_weight * c for a, (_, c) in zip(att, nbest)]
    return seqs[max(range(n), key=lambda i: total[i])]


@torch.inference_mode()
def decode_batch(
    model: ASRModel,
    feats: torch.Tensor,
    feat_lens: torch.Tensor,
    mode: str = "attention_rescoring",
    beam: int = 10,
    chunk_size: int = 0,
    left_chunks: int = -1,
    ctc_weight: float = 0.5,
    reverse_weight: float | None = None,
) -> list[list[int]]:
    """feats (B, T, F) raw fbank -> token ids per utterance."""
    if mode not in MODES:
        raise UmeError(f"unknown decoding mode {mode!r}; choose one of {MODES}")
    enc, valid = model.encode(feats, feat_lens, chunk_size, left_chunks)  # (B, T', D)
    lens = valid.sum(1)
    if mode == "attention":
        return [attention_beam(model, enc[b : b + 1], valid[b], beam) for b in range(enc.size(0))]
    log_probs = model.ctc_log_probs(enc)  # (B, T', V)
    if mode == "ctc_greedy":
        return ctc_greedy(log_probs, lens)
    out = []
    for b in range(enc.size(0)):
        nbest = ctc_prefix_beam(log_probs[b, : lens[b]], beam)
        if mode == "ctc_prefix_beam":
            out.append(list(nbest[0][0]) if nbest else [])
        else:
            out.append(rescore(model, enc[b : b + 1], valid[b], nbest, ctc_weight, reverse_weight))
    return out
