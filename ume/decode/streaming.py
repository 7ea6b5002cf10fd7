"""Streaming recognition: audio in pieces -> fbank -> chunk encoder with caches -> CTC search.

`StreamingDecoder` takes audio as it arrives (`accept`), computes fbank incrementally
(`OnlineFeatures`), runs the chunk encoder (ume/model/streaming.py) on every chunk whose input
window is complete, updates the CTC search frame by frame and returns a partial hypothesis per
chunk. `finish` runs the last (shorter) chunk and the final search: for `ctc_greedy` and
`ctc_prefix_beam` the final result is the search state; `attention_rescoring` rescores the CTC
n-best with the attention decoder over all encoder frames, `attention` runs the decoder's beam
search over them. With the same mode, chunk size and left chunks the result equals
`ume decode --chunk-size N` (the masked full-utterance encoder): tests/test_streaming.py.

A live stream is many utterances: with an `Endpoint`, an utterance ends after a pause (CTC
blank frames) or at a maximum length; its final result goes to `take_finished` and the encoder
caches, kept frames and hypotheses start afresh, so state and per-chunk cost stay bounded
however long the stream runs (fbank frames are freed as soon as no window needs them).

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
from collections import deque
from dataclasses import dataclass

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
MAX_CHUNK_STATS = 100_000  # per-chunk timings kept (about 36 h of 1.28 s chunks)


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


@dataclass(frozen=True)
class Endpoint:
    """When an utterance of a live stream ends: its final result is made (the mode's final
    search over its frames) and the decoder starts afresh, so that state and per-chunk cost
    stay bounded however long the stream runs. Silence is counted in encoder frames whose best
    CTC label is blank. 0 switches a rule off.

    silence_after_speech  seconds of silence after the utterance's last token
    silence_alone         seconds of silence without any token: dropped, nothing to say
    max_utterance         seconds: the utterance ends without a pause (with the chunk that
                          reaches this length)
    """

    silence_after_speech: float = 1.0
    silence_alone: float = 5.0
    max_utterance: float = 20.0


class StreamingDecoder:
    """A stream, chunk by chunk (see the module docstring). Without `endpoint` the whole
    stream is one utterance, and state grows with it: caches (with left_chunks < 0), encoder
    frames for the final search, CTC hypotheses. With `endpoint` each utterance ends at a
    pause (or at its maximum length); `take_finished` hands over the finished ones."""

    def __init__(
        self,
        model: ASRModel,
        feat_cfg: FeatureConfig,
        chunk_size: int = 16,
        left_chunks: int = -1,
        mode: str = "ctc_prefix_beam",
        beam: int = 10,
        ctc_weight: float = 0.5,
        endpoint: Endpoint | None = None,
        times: bool = False,
    ) -> None:
        if mode not in MODES:
            raise UmeError(f"unknown decoding mode {mode!r}; choose one of {MODES}")
        self.model = model.eval()
        self.enc = ChunkEncoder(model, chunk_size, left_chunks)
        self.mode, self.beam, self.ctc_weight = mode, beam, ctc_weight
        self.endpoint, self.times = endpoint, times
        self.features = OnlineFeatures(feat_cfg, SAMPLE_RATE)
        self.shift = int(round(SAMPLE_RATE * feat_cfg.frame_shift_ms / 1000))
        self.frame_len = int(round(SAMPLE_RATE * feat_cfg.frame_length_ms / 1000))
        self.frame_seconds = self.enc.stride / chunk_size * self.shift / SAMPLE_RATE  # encoder
        self.next_start = 0  # first input frame of the next chunk's window
        self.finished = False
        self.done: list[dict] = []  # finished utterances not yet taken
        # per chunk (the last MAX_CHUNK_STATS): compute seconds, the last input sample it needed
        self.chunk_seconds: deque[float] = deque(maxlen=MAX_CHUNK_STATS)
        self.chunk_needs: deque[int] = deque(maxlen=MAX_CHUNK_STATS)
        self.num_chunks = 0
        self.num_utterances = 0  # finished (and non-empty, or the stream's only one)
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.att, self.cnn = self.enc.init_cache()
        self.utt_start = self.next_start  # input frame where this utterance starts
        self.utt_frames = 0  # encoder frames so far
        self.enc_out: list[torch.Tensor] = []  # (1, c, D) per chunk
        self.lp: list[torch.Tensor] = []  # (c, V) per chunk
        self.greedy: list[int] = []  # frame-level argmax path
        self.beams: Beams = {(): (0.0, NEG_INF)}
        self.trailing_blank = 0  # encoder frames since the last non-blank best label
        self.heard_token = False

    # ---- input ------------------------------------------------------------------------------
    def accept(self, wave: np.ndarray) -> list[list[int]]:
        """Append float32 mono 16 kHz samples (N,); returns the partial tokens of the current
        utterance after every chunk that became complete (possibly none)."""
        if self.finished:
            raise RuntimeError("StreamingDecoder.accept after finish: start a new decoder")
        self.features.accept(wave)
        return self._run(final=False)

    def finish(self) -> list[int]:
        """End of audio: the last chunk, then the final search -> the tokens of the stream
        (of the utterances that `take_finished` has not handed over, and the last one)."""
        if not self.finished:
            self.features.finish()
            self._run(final=True)
            # an empty result only when the stream gave no utterance at all; state kept to inspect
            self._end_utterance(keep_empty=self.num_utterances == 0, reset=False)
            self.finished = True
        return [t for u in self.done for t in u["ids"]]

    def take_finished(self) -> list[dict]:
        """The utterances finished since the last call: [{"ids", "start", "end"}] (seconds
        in the stream; with `times` also "log_probs" (T', V)); the decoder forgets them."""
        out, self.done = self.done, []
        return out

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
            offset = torch.tensor([self.utt_frames], device=feats.device)
            out, self.att, self.cnn = enc(feats, self.att, self.cnn, offset)  # (1, c, D)
            lp = self.model.ctc_log_probs(out)[0]  # (c, V)
            self.enc_out.append(out)
            self.lp.append(lp)
            self.utt_frames += out.size(1)
            best = lp.argmax(-1).tolist()
            if self.mode == "ctc_greedy":
                self.greedy += best
            else:
                for t in range(lp.size(0)):
                    self.beams = prefix_beam_step(self.beams, lp[t], self.beam)
            for b in best:
                self.trailing_blank = self.trailing_blank + 1 if b == 0 else 0
                self.heard_token |= b != 0
            partials.append(self.partial())
            self.chunk_seconds.append(time.perf_counter() - t0)
            self.chunk_needs.append((e - 1) * self.shift + self.frame_len)
            self.num_chunks += 1
            self.next_start += enc.stride
            self.features.discard(self.next_start)  # no later window starts before
            if self._is_endpoint():
                self._end_utterance(keep_empty=False)
        return partials

    def _is_endpoint(self) -> bool:
        ep = self.endpoint
        if ep is None:
            return False
        silence = self.trailing_blank * self.frame_seconds
        if ep.max_utterance > 0 and self.utt_frames * self.frame_seconds >= ep.max_utterance:
            return True
        if self.heard_token:
            return ep.silence_after_speech > 0 and silence >= ep.silence_after_speech
        return ep.silence_alone > 0 and silence >= ep.silence_alone

    def _end_utterance(self, keep_empty: bool, reset: bool = True) -> None:
        ids = self.result()
        if ids or keep_empty:
            start = self.utt_start * self.shift / SAMPLE_RATE
            end = start + self.utt_frames * self.frame_seconds
            utt = {"ids": ids, "start": round(start, 3), "end": round(end, 3)}
            if self.times:
                utt["log_probs"] = self.log_probs().numpy()  # (T', V)
            self.done.append(utt)
            self.num_utterances += 1
        if reset:
            self._new_utterance()

    # ---- output -----------------------------------------------------------------------------
    def partial(self) -> list[int]:
        """Best tokens of the current utterance so far (CTC: greedy path or best prefix)."""
        if self.mode == "ctc_greedy":
            return collapse(self.greedy)
        return list(max(self.beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0])

    def encoder_out(self) -> torch.Tensor:
        """The current utterance's encoder frames (1, T', D)."""
        if not self.enc_out:
            return torch.zeros(1, 0, self.enc.d_model, device=self.model.cmvn_mean.device)
        return torch.cat(self.enc_out, dim=1)

    def log_probs(self) -> torch.Tensor:
        """The current utterance's CTC log-probabilities (T', V)."""
        if not self.lp:
            return torch.zeros(0, self.model.vocab_size)
        return torch.cat(self.lp).cpu()

    def state_size(self) -> dict[str, int]:
        """What the decoder holds now: attention-cache frames, encoder frames kept for the
        final search, fbank frames, tokens in the longest hypothesis, finished utterances."""
        return {
            "att_cache_frames": int(self.att.size(2)),
            "encoder_frames": sum(o.size(1) for o in self.enc_out),
            "feature_frames": self.features.num_kept,
            "hyp_tokens": max((len(p) for p in self.beams), default=0) + len(self.greedy),
            "finished_utterances": len(self.done),
        }

    @torch.no_grad()
    def result(self) -> list[int]:
        """Final tokens of the current utterance in the decoding mode."""
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


def _last(xs: deque, n: int) -> list:
    return list(xs)[len(xs) - n :] if n > 0 else []


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
            n_before = sd.num_chunks
            t0 = time.perf_counter()
            sd.accept(w[end - piece : end])
            busy = start + time.perf_counter() - t0
            # every chunk this call produced is ready when the call returns
            for need in _last(sd.chunk_needs, sd.num_chunks - n_before):
                delay_ms.append(1000 * (busy - need / SAMPLE_RATE))
        start = max(len(w) / SAMPLE_RATE, busy)
        n_before = sd.num_chunks
        t0 = time.perf_counter()
        sd.finish()
        done = start + time.perf_counter() - t0
        for need in _last(sd.chunk_needs, sd.num_chunks - n_before):
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
