"""Streaming recognition: audio in pieces -> fbank -> chunk encoder with caches -> CTC search.

`StreamingDecoder` takes audio as it arrives (`accept`), computes fbank incrementally
(`OnlineFeatures`), runs the chunk encoder (ume/model/streaming.py) on every chunk whose input
window is complete, updates the CTC search frame by frame and returns a partial hypothesis per
chunk. `finish` runs the last (shorter) chunk and the final search: for `ctc_greedy` and
`ctc_prefix_beam` the final result is the search state; `attention_rescoring` rescores the CTC
n-best with the attention decoder over all encoder frames, `attention` runs the decoder's beam
search over them. With the same mode, chunk size and left chunks the result equals
`ume decode --chunk-size N` (the masked full-utterance encoder): tests/test_streaming.py.

Features are rounded to float16 before the encoder, as the decode and training feature store
keeps them (ume/data/loader.py), so that streaming and `ume decode` see the same numbers.

`stream_latency` measures what a streaming user waits for (the `ume bench rtf` latency keys).

Example:
    >>> sd = StreamingDecoder(model, cfg.features, chunk_size=16, mode="ctc_prefix_beam")
    >>> for piece in pieces:                       # float32 mono 16 kHz, any piece size
    ...     for ids in sd.accept(piece):           # one partial per finished chunk
    ...         print(tokenizer.decode(ids))
    >>> ids = sd.finish()
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from ume.config import FeatureConfig
from ume.data.features import OnlineFeatures
from ume.decode.search import (
    MODES,
    NEG_INF,
    Beams,
    attention_beam,
    nbest_of,
    prefix_beam_step,
    rescore,
)
from ume.errors import UmeError
from ume.model.asr import ASRModel
from ume.model.streaming import ChunkEncoder

SAMPLE_RATE = 16000


def model_features(feats: np.ndarray) -> torch.Tensor:
    """(T, F) float32 fbank -> float32 tensor rounded to float16, as FeatureStore stores it."""
    return torch.from_numpy(np.ascontiguousarray(feats)).to(torch.float16).float()


def collapse(path: list[int], blank: int = 0) -> list[int]:
    """Frame-level CTC path -> tokens (repeats merged, blanks removed)."""
    out, prev = [], blank
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


class StreamingDecoder:
    """One utterance, chunk by chunk (see the module docstring)."""

    def __init__(
        self,
        model: ASRModel,
        feat_cfg: FeatureConfig,
        chunk_size: int = 16,
        left_chunks: int = -1,
        mode: str = "ctc_prefix_beam",
        beam: int = 10,
        ctc_weight: float = 0.5,
    ) -> None:
        if mode not in MODES:
            raise UmeError(f"unknown decoding mode {mode!r}; choose one of {MODES}")
        self.model = model.eval()
        self.enc = ChunkEncoder(model, chunk_size, left_chunks)
        self.mode, self.beam, self.ctc_weight = mode, beam, ctc_weight
        self.features = OnlineFeatures(feat_cfg, SAMPLE_RATE)
        self.shift = int(round(SAMPLE_RATE * feat_cfg.frame_shift_ms / 1000))
        self.frame_len = int(round(SAMPLE_RATE * feat_cfg.frame_length_ms / 1000))
        self.att, self.cnn = self.enc.init_cache()
        self.next_start = 0  # first input frame of the next chunk's window
        self.enc_out: list[torch.Tensor] = []  # (1, c, D) per chunk
        self.lp: list[torch.Tensor] = []  # (c, V) per chunk
        self.greedy: list[int] = []  # frame-level argmax path
        self.beams: Beams = {(): (0.0, NEG_INF)}
        self.finished = False
        # per chunk: compute seconds, and the input sample its window needed last
        self.chunk_seconds: list[float] = []
        self.chunk_needs: list[int] = []

    # ---- input ------------------------------------------------------------------------------
    def accept(self, wave: np.ndarray) -> list[list[int]]:
        """Append float32 mono 16 kHz samples (N,); returns the partial tokens after every
        chunk that became complete (possibly none)."""
        if self.finished:
            raise RuntimeError("StreamingDecoder.accept after finish: start a new decoder")
        self.features.accept(wave)
        return self._run(final=False)

    def finish(self) -> list[int]:
        """End of audio: the last chunk, then the final search -> tokens."""
        if not self.finished:
            self.features.finish()
            self._run(final=True)
            self.finished = True
        return self.result()

    @torch.no_grad()
    def _run(self, final: bool) -> list[list[int]]:
        partials = []
        enc = self.enc
        while True:
            n, s = self.features.num_frames, self.next_start
            if n - s >= enc.window:
                e = s + enc.window
            elif final and n - s >= enc.min_input:
                e = n
            else:
                break
            t0 = time.perf_counter()
            feats = model_features(self.features.frames(s, e)).unsqueeze(0)  # (1, W, F)
            feats = feats.to(self.model.cmvn_mean.device)
            offset = torch.tensor([sum(o.size(1) for o in self.enc_out)], device=feats.device)
            out, self.att, self.cnn = enc(feats, self.att, self.cnn, offset)  # (1, c, D)
            lp = self.model.ctc_log_probs(out)[0]  # (c, V)
            self.enc_out.append(out)
            self.lp.append(lp)
            if self.mode == "ctc_greedy":
                self.greedy += lp.argmax(-1).tolist()
            else:
                for t in range(lp.size(0)):
                    self.beams = prefix_beam_step(self.beams, lp[t], self.beam)
            partials.append(self.partial())
            self.chunk_seconds.append(time.perf_counter() - t0)
            self.chunk_needs.append((e - 1) * self.shift + self.frame_len)
            self.next_start += enc.stride
        return partials

    # ---- output -----------------------------------------------------------------------------
    def partial(self) -> list[int]:
        """Best tokens so far (CTC: greedy path or best prefix)."""
        if self.mode == "ctc_greedy":
            return collapse(self.greedy)
        return list(max(self.beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0])

    def encoder_out(self) -> torch.Tensor:
        """All encoder frames so far (1, T', D)."""
        if not self.enc_out:
            return torch.zeros(1, 0, self.enc.d_model, device=self.model.cmvn_mean.device)
        return torch.cat(self.enc_out, dim=1)

    def log_probs(self) -> torch.Tensor:
        """All CTC log-probabilities so far (T', V)."""
        if not self.lp:
            return torch.zeros(0, self.model.vocab_size)
        return torch.cat(self.lp).cpu()

    @torch.no_grad()
    def result(self) -> list[int]:
        """Final tokens of the decoding mode (after finish)."""
        if self.mode == "ctc_greedy":
            return collapse(self.greedy)
        enc = self.encoder_out()
        if enc.size(1) == 0:
            return []
        valid = torch.ones(enc.size(1), dtype=torch.bool, device=enc.device)
        if self.mode == "attention":
            return attention_beam(self.model, enc, valid, self.beam)
        nbest = nbest_of(self.beams)
        if self.mode == "ctc_prefix_beam":
            return list(nbest[0][0]) if nbest else []
        return rescore(self.model, enc, valid, nbest, self.ctc_weight)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


@torch.no_grad()
def stream_latency(
    model: ASRModel,
    feat_cfg: FeatureConfig,
    waves: list[np.ndarray],
    chunk_size: int = 16,
    left_chunks: int = -1,
    mode: str = "ctc_prefix_beam",
    piece_ms: float = 10.0,
) -> dict:
    """Real streaming latency over `waves` (float32 16 kHz), one utterance at a time.

    Audio is delivered in `piece_ms` pieces on a simulated clock that runs at real time: a
    piece is handed over when its last sample has "arrived", or when the decoder is done with
    the previous one, whichever is later (a backlog builds up if decoding is slower than real
    time). For every chunk:
        chunk_ms  compute time: fbank frames -> encoder chunk with caches -> CTC -> search
        delay_ms  from the arrival of the last audio sample the chunk needs (its 70 ms conv
                  stem lookahead included) to its partial result
    final_ms is the time from the end of the audio to the final result (last chunk + the
    mode's final search, e.g. attention rescoring). Medians and 95th percentiles in ms.
    """
    piece = max(1, int(SAMPLE_RATE * piece_ms / 1000))
    chunk_ms: list[float] = []
    delay_ms: list[float] = []
    final_ms: list[float] = []
    for w in waves:
        sd = StreamingDecoder(model, feat_cfg, chunk_size, left_chunks, mode)
        busy = 0.0  # simulated clock (s): when the decoder is free again
        for end in range(piece, len(w) + piece, piece):
            arrive = min(end, len(w)) / SAMPLE_RATE
            start = max(arrive, busy)
            n_before = len(sd.chunk_seconds)
            t0 = time.perf_counter()
            sd.accept(w[end - piece : end])
            busy = start + time.perf_counter() - t0
            # every chunk this call produced is ready when the call returns
            for need in sd.chunk_needs[n_before:]:
                delay_ms.append(1000 * (busy - need / SAMPLE_RATE))
        start = max(len(w) / SAMPLE_RATE, busy)
        n_before = len(sd.chunk_seconds)
        t0 = time.perf_counter()
        sd.finish()
        done = start + time.perf_counter() - t0
        for need in sd.chunk_needs[n_before:]:
            delay_ms.append(1000 * (done - need / SAMPLE_RATE))
        final_ms.append(1000 * (done - len(w) / SAMPLE_RATE))
        chunk_ms += [1000 * s for s in sd.chunk_seconds]
    return {
        "chunks": len(chunk_ms),
        "chunk_ms_p50": round(statistics.median(chunk_ms), 2) if chunk_ms else float("nan"),
        "chunk_ms_p95": round(_pct(chunk_ms, 95), 2),
        "delay_ms_p50": round(statistics.median(delay_ms), 2) if delay_ms else float("nan"),
        "delay_ms_p95": round(_pct(delay_ms, 95), 2),
        "final_ms_p50": round(statistics.median(final_ms), 2) if final_ms else float("nan"),
        "final_ms_p95": round(_pct(final_ms, 95), 2),
        "chunk_audio_ms": chunk_size * model.encoder.embed.rate * feat_cfg.frame_shift_ms,
        "piece_ms": piece_ms,
    }
