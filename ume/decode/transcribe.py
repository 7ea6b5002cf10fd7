"""`ume transcribe`: audio files (or 16-bit PCM on stdin) -> text.

    ume transcribe [--model EXPDIR] FILE... [--mode MODE] [--json] [--max-segment S] [--device D]
    ume transcribe --stream --chunk-size 16 FILE      # partials on stderr, utterances on stdout
    arecord -f S16_LE -r 16000 -c 1 | ume transcribe --stream --chunk-size 16 -   # live

The default model is the bundled one (`ume.bundled_model()`). Files are anything soundfile
reads (WAV, FLAC, OGG, ...), any sample rate (resampled to 16 kHz with soxr) and any channel
count (averaged to mono). `-` reads raw little-endian 16-bit PCM, mono, at --rate Hz (default
16000) from stdin. A file that is missing or unreadable gets a one-line error on stderr naming
it; the other files are still transcribed; the exit status is 1 if any file failed.

Without --stream: one line `FILE<TAB>text` per file. Up to --max-segment seconds (default 20)
the audio is decoded whole as `ume decode` does; longer audio is cut at pauses
(ume/data/segment.py) and decoded segment by segment, read block by block, so memory does not
grow with the file's length. --json: one JSON object per file with the decoding mode, the
segments (start, end, text) and per-token CTC start/end times (seconds in the file, from a
CTC Viterbi alignment of the final tokens).

With --stream the audio is fed in chunk-sized pieces to the chunk-by-chunk encoder with caches
(ume/decode/streaming.py); partial hypotheses go to stderr as they come. An utterance ends after
--endpoint-silence seconds of silence following speech (default 1) or at --max-utterance
seconds (default 20); it is then printed (`FILE<TAB>text`, or a JSON object with its start and
end) and the decoder starts afresh, so a stream of any length keeps bounded state. With
`--endpoint-silence 0 --max-utterance 0` the stream is one utterance whose text equals the
non-streaming one for the same mode, chunk size and left chunks.

Python:
    >>> import ume
    >>> ume.transcribe(ume.bundled_model(), "hello.wav")
    'HELLO WORLD'
    >>> wave, sr = torchaudio.load("hello.wav")               # (C, N)
    >>> ume.transcribe(ume.bundled_model(), wave, sample_rate=sr)
    >>> ume.transcribe_segments(ume.bundled_model(), "lecture.wav")  # [{start, end, text, tokens}]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ume.config import ExperimentConfig
from ume.data.audio_blocks import audio_duration, read_blocks
from ume.data.features import compute_fbank
from ume.data.manifest import DataError, load_audio
from ume.data.segment import PauseSegmenter, Segment
from ume.data.tokenizer import Tokenizer
from ume.data.waveform import as_mono_16k
from ume.decode.search import decode_batch
from ume.decode.streaming import SAMPLE_RATE, Endpoint, StreamingDecoder, model_features
from ume.errors import UmeError
from ume.expdir import MODEL_FILE
from ume.model.asr import ASRModel

DEFAULT_MAX_SEGMENT = 20.0  # seconds: longer audio is cut at pauses


@dataclass
class Recognizer:
    """A loaded experiment dir: config, tokenizer, model (eval)."""

    cfg: ExperimentConfig
    tokenizer: Tokenizer
    model: ASRModel
    path: Path

    @classmethod
    def load(cls, exp_dir: str | os.PathLike) -> Recognizer:
        from ume.expdir import load_experiment

        cfg, tok, model = load_experiment(exp_dir)
        return cls(cfg, tok, model, Path(exp_dir))

    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder output frame."""
        return self.model.encoder.embed.rate * self.cfg.features.frame_shift_ms / 1000


def _file_identity(exp_dir: Path) -> tuple:
    """(name, inode, mtime_ns, size) of every file a Recognizer is built from: a retrained or
    re-exported model dir gets a new identity, so the cache never returns stale weights."""
    files = [exp_dir / f for f in ("config.yaml", "cmvn.json", MODEL_FILE)]
    tok = exp_dir / "tokenizer"
    files += sorted(tok.rglob("*")) if tok.is_dir() else []
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:  # missing: Recognizer.load names it
            continue
        out.append((str(f.relative_to(exp_dir)), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _cached_by_identity(path: str, identity: tuple) -> Recognizer:
    return Recognizer.load(path)


def _cached(path: str) -> Recognizer:
    """The Recognizer of an experiment dir, loaded once per version of its files."""
    return _cached_by_identity(path, _file_identity(Path(path)))


def ctc_alignment(log_probs: np.ndarray, tokens: list[int], blank: int = 0) -> list | None:
    """Viterbi CTC alignment of `tokens` to log_probs (T, V): [(first, last + 1)] encoder
    frames per token, or None when the tokens cannot be aligned (more tokens than frames)."""
    t_max, n = log_probs.shape[0], len(tokens)
    if n == 0:
        return []
    ext = np.full(2 * n + 1, blank)
    ext[1::2] = tokens  # blank, t1, blank, t2, ..., blank
    s_max = ext.size
    # a state may also come from two back when it is a token unlike the token before it
    skip = np.zeros(s_max, bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(s_max, -np.inf)
    score[:2] = log_probs[0, ext[:2]]
    back = np.zeros((t_max, s_max), np.int8)  # 0: stay, 1: from s-1, 2: from s-2
    for t in range(1, t_max):
        stay = score
        one = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        cand = np.stack([stay, one, two])  # (3, S)
        back[t] = cand.argmax(0)
        score = cand.max(0) + log_probs[t, ext]
    ends = [s_max - 1, s_max - 2]
    s = max(ends, key=lambda e: score[e])
    if not np.isfinite(score[s]):
        return None
    spans: list[list[int]] = [[t_max, -1] for _ in range(n)]
    for t in range(t_max - 1, -1, -1):
        if s % 2 == 1:
            sp = spans[s // 2]
            sp[0], sp[1] = min(sp[0], t), max(sp[1], t + 1)
        s -= int(back[t, s])
    return [(a, b) for a, b in spans]


def transcribe_wave(
    rec: Recognizer,
    wave: np.ndarray,
    mode: str = "attention_rescoring",
    beam: int = 10,
    chunk_size: int = 0,
    left_chunks: int = -1,
    times: bool = False,
) -> dict:
    """float32 mono 16 kHz wave (N,) -> {"text", "tokens"[, "times"]} (full utterance)."""
    feats = model_features(compute_fbank(wave, rec.cfg.features))  # (T, F)
    if rec.model.encoder.embed.output_lengths(torch.tensor(feats.shape[0])) < 1:
        return {"text": "", "ids": [], "too_short": True}
    dev = rec.model.cmvn_mean.device
    feats, n = feats.to(dev), torch.tensor([feats.shape[0]], device=dev)
    with torch.inference_mode():
        ids = decode_batch(rec.model, feats[None], n, mode, beam, chunk_size, left_chunks)[0]
        res = {"text": rec.tokenizer.decode(ids), "ids": ids}
        if times:
            enc, _ = rec.model.encode(feats[None], n, chunk_size, left_chunks)
            res["log_probs"] = rec.model.ctc_log_probs(enc)[0].cpu().numpy()
    return res


def _token_json(
    rec: Recognizer, ids: list[int], log_probs: np.ndarray | None, offset: float = 0.0
) -> list[dict]:
    """Per-token dicts {"token", "id", "start", "end"}: CTC-aligned times in seconds from
    the start of the stream (`offset`: where this piece of audio starts)."""
    spans = ctc_alignment(log_probs, ids) if log_probs is not None else None
    fs = rec.frame_seconds
    out = []
    for i, tid in enumerate(ids):
        item: dict = {"token": rec.tokenizer.id2token(tid), "id": tid}
        if spans is not None:
            item["start"] = round(offset + spans[i][0] * fs, 3)
            item["end"] = round(offset + spans[i][1] * fs, 3)
        else:
            item["start"] = item["end"] = None
        out.append(item)
    return out


def transcribe_pieces(
    rec: Recognizer,
    pieces: Iterable[np.ndarray],
    mode: str = "attention_rescoring",
    beam: int = 10,
    chunk_size: int = 0,
    left_chunks: int = -1,
    times: bool = False,
    max_segment: float = DEFAULT_MAX_SEGMENT,
) -> dict:
    """Audio of any length, as float32 mono 16 kHz pieces (n,) -> {"text", "ids", "segments"}.

    Up to `max_segment` seconds are decoded whole (`transcribe_wave`). Longer audio is cut at
    pauses (`PauseSegmenter`, segments of at most `max_segment` seconds) and every segment is
    decoded on its own as it closes: memory stays bounded whatever the length, and the model
    sees utterance-sized inputs as in training. `max_segment` <= 0 decodes everything whole.
    segments: [{"start", "end" (seconds in the stream), "text", "ids"[, "tokens" with times
    when `times`]}]; "text" decodes all segments' tokens in order.
    """
    limit = int(max_segment * SAMPLE_RATE) if max_segment > 0 else None
    it = iter(pieces)
    head: list[np.ndarray] = []
    heard = 0
    for x in it:
        head.append(np.asarray(x, np.float32))
        heard += len(x)
        if limit is not None and heard > limit:
            break
    else:  # short enough: one piece
        wave = np.concatenate(head) if head else np.zeros(0, np.float32)
        res = transcribe_wave(rec, wave, mode, beam, chunk_size, left_chunks, times)
        seg = {"start": 0.0, "end": round(len(wave) / SAMPLE_RATE, 3)}
        seg.update(text=res["text"], ids=res["ids"])
        if times:
            seg["tokens"] = _token_json(rec, res["ids"], res.pop("log_probs", None))
        res["segments"] = [seg]
        return res

    segments: list[dict] = []

    def decode(segs: list[Segment]) -> None:
        for s in segs:
            r = transcribe_wave(rec, s.wave, mode, beam, chunk_size, left_chunks, times)
            out = {"start": round(s.start_s, 3), "end": round(s.end_s, 3)}
            out.update(text=r["text"], ids=r["ids"])
            if times:
                out["tokens"] = _token_json(rec, r["ids"], r.get("log_probs"), s.start_s)
            segments.append(out)

    segmenter = PauseSegmenter(max_seconds=max_segment)
    while head:
        decode(segmenter.accept(head.pop(0)))
    for x in it:
        decode(segmenter.accept(x))
    decode(segmenter.finish())
    ids = [t for s in segments for t in s["ids"]]
    return {"text": rec.tokenizer.decode(ids), "ids": ids, "segments": segments}


def _array_pieces(wave: np.ndarray, seconds: float = 4.0) -> Iterator[np.ndarray]:
    step = int(seconds * SAMPLE_RATE)
    for i in range(0, len(wave), step):
        yield wave[i : i + step]


def _source_pieces(
    audio_or_path: str | os.PathLike | object, sample_rate: int, max_segment: float
) -> Iterator[np.ndarray]:
    """A file (read whole when it is short, else block by block) or an array -> pieces."""
    if isinstance(audio_or_path, (str, os.PathLike)):
        path = str(audio_or_path)
        if max_segment <= 0 or audio_duration(path) <= max_segment:
            return iter([load_audio(path)])
        return read_blocks(path)
    return _array_pieces(as_mono_16k(audio_or_path, sample_rate))


def _recognizer(model: str | os.PathLike | Recognizer) -> Recognizer:
    return model if isinstance(model, Recognizer) else _cached(str(Path(model).resolve()))


def transcribe(
    model: str | os.PathLike | Recognizer,
    audio_or_path: str | os.PathLike | object,
    mode: str = "attention_rescoring",
    sample_rate: int = SAMPLE_RATE,
    chunk_size: int = 0,
    left_chunks: int = -1,
    max_segment: float = DEFAULT_MAX_SEGMENT,
) -> str:
    """Text of one recording: `model` an experiment dir (loaded once and cached) or a
    Recognizer; `audio_or_path` a file soundfile reads, or an array (numpy or torch) at
    `sample_rate`: (N,), (channels, N) as torchaudio.load returns, or (N, channels) as
    soundfile.read returns; float in [-1, 1] or int16/int32 PCM (see ume.data.waveform).
    Audio longer than `max_segment` seconds is cut at pauses (see `transcribe_pieces`).

    Example:
        >>> transcribe(bundled_model(), "hello.wav", mode="ctc_greedy")
        >>> wave, sr = torchaudio.load("hello.wav"); transcribe(bundled_model(), wave, sample_rate=sr)
    """
    rec = _recognizer(model)
    pieces = _source_pieces(audio_or_path, sample_rate, max_segment)
    return transcribe_pieces(
        rec, pieces, mode, chunk_size=chunk_size, left_chunks=left_chunks, max_segment=max_segment
    )["text"]


def transcribe_segments(
    model: str | os.PathLike | Recognizer,
    audio_or_path: str | os.PathLike | object,
    mode: str = "attention_rescoring",
    sample_rate: int = SAMPLE_RATE,
    max_segment: float = DEFAULT_MAX_SEGMENT,
) -> list[dict]:
    """`transcribe` with times: [{"start", "end", "text", "tokens": [{"token", "start", "end"}]}]
    per segment, in seconds from the start of the recording (token times from a CTC alignment).

    Example:
        >>> for s in transcribe_segments(bundled_model(), "lecture.wav"):
        ...     print(f"{s['start']:8.2f} {s['end']:8.2f}  {s['text']}")
    """
    rec = _recognizer(model)
    pieces = _source_pieces(audio_or_path, sample_rate, max_segment)
    res = transcribe_pieces(rec, pieces, mode, times=True, max_segment=max_segment)
    return [{k: v for k, v in s.items() if k != "ids"} for s in res["segments"]]


# ---- command line ---------------------------------------------------------------------------
def _stdin_pieces(rate: int, piece_samples: int):
    """Raw s16le mono PCM from stdin -> float32 16 kHz pieces, as they arrive."""
    import soxr

    stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != 16000 else None
    buf = sys.stdin.buffer
    nbytes = 2 * max(1, piece_samples * rate // SAMPLE_RATE)
    rest = b""
    while True:
        data = buf.read(nbytes)
        last = not data
        data = rest + data
        usable = len(data) - len(data) % 2
        rest = data[usable:]
        x = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        if stream is not None:
            x = stream.resample_chunk(x, last=last)
        if x.size:
            yield x
        if last:
            return


def _stdin_audio(rate: int) -> Iterator[np.ndarray]:
    """PCM pieces from stdin; DataError when stdin ends without a sample."""
    heard = 0
    for x in _stdin_pieces(rate, 1 << 16):
        heard += len(x)
        yield x
    if heard == 0:
        raise DataError("stdin gave no audio (expected raw 16-bit little-endian mono PCM)")


def _stream_one(
    rec: Recognizer, name: str, args: argparse.Namespace, emit: Callable[[dict], None]
) -> None:
    """Stream one file (or stdin) through the chunk decoder: partials on stderr as chunks
    finish; `emit` gets each utterance as an endpoint closes it (all of it at the end of the
    audio when endpointing is off)."""
    endpoint = None
    if args.endpoint_silence > 0 or args.max_utterance > 0:
        endpoint = Endpoint(args.endpoint_silence, max(5.0, args.endpoint_silence),
                            args.max_utterance)  # fmt: skip
    sd = StreamingDecoder(
        rec.model, rec.cfg.features, args.chunk_size, args.left_chunks, args.mode, args.beam,
        endpoint=endpoint, times=args.json,
    )  # fmt: skip
    piece = sd.enc.stride * sd.shift  # one chunk of audio per piece
    pieces = _stdin_pieces(args.rate, piece) if name == "-" else None
    if pieces is None:
        wave = load_audio(name)
        pieces = (wave[i : i + piece] for i in range(0, len(wave), piece))
    heard = 0

    def flush() -> None:
        for utt in sd.take_finished():
            lp = utt.pop("log_probs", None)
            utt["text"] = rec.tokenizer.decode(utt["ids"])
            if args.json:
                utt["tokens"] = _token_json(rec, utt["ids"], lp, utt["start"])
            emit(utt)

    for x in pieces:
        heard += len(x)
        for ids in sd.accept(x):
            print(f"{name}\t[{heard / SAMPLE_RATE:.2f}s] {rec.tokenizer.decode(ids)}",
                  file=sys.stderr, flush=True)  # fmt: skip
        flush()
    if heard == 0:
        raise DataError("no audio" + (" on stdin" if name == "-" else ""))
    sd.finish()
    flush()


def _tokens_of(rec: Recognizer, res: dict) -> list[dict]:
    """The result's tokens with times: from its segments, or from its log-probabilities."""
    return [t for seg in res["segments"] for t in seg.get("tokens", [])]


def main_transcribe(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.stream and args.chunk_size <= 0:
        raise UmeError("--stream needs --chunk-size N > 0 (encoder frames per chunk, e.g. 16)")
    if args.files.count("-") > 1:
        raise UmeError("stdin ('-') can be given only once")
    if args.model is None:
        from ume.bundled import bundled_model

        args.model = str(bundled_model())
    rec = Recognizer.load(args.model)
    from ume.device import resolve_device

    rec.model.to(resolve_device(getattr(args, "device", "auto")))
    failed = 0
    for name in args.files:

        def emit(res: dict, name: str = name) -> None:
            if res.get("too_short"):
                print(
                    f"ume transcribe: {name}: too short for the model, empty text", file=sys.stderr
                )
            if not args.json:
                print(f"{name}\t{res['text']}", flush=True)
                return
            obj = {
                "file": name,
                "text": res["text"],
                "mode": args.mode,
                "chunk_size": args.chunk_size,
                "left_chunks": args.left_chunks,
                "stream": bool(args.stream),
            }
            if args.stream:
                obj["start"], obj["end"] = res["start"], res["end"]
                obj["tokens"] = res["tokens"]
            else:
                obj["tokens"] = _tokens_of(rec, res)
                obj["segments"] = [
                    {k: seg[k] for k in ("start", "end", "text")} for seg in res["segments"]
                ]
            print(json.dumps(obj, ensure_ascii=False), flush=True)

        try:
            if args.stream:
                _stream_one(rec, name, args, emit)
                continue
            if name == "-":
                pieces = _stdin_audio(args.rate)
            else:
                pieces = _source_pieces(name, SAMPLE_RATE, args.max_segment)
            res = transcribe_pieces(
                rec, pieces, args.mode, args.beam, args.chunk_size, args.left_chunks,
                args.json, args.max_segment,
            )  # fmt: skip
        except (DataError, OSError) as e:
            msg = str(e) if name in str(e) else f"{name}: {e}"
            print(f"ume transcribe: error: {msg}", file=sys.stderr, flush=True)
            failed += 1
            continue
        emit(res)
    return 1 if failed else 0
