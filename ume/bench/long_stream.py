"""`ume bench stream`: a long live stream through the chunk decoder; per-chunk compute time,
memory and decoder state, minute by minute.

The stream: test utterances (default: the first `--utts` of the paper preset's test split,
re-synthesised) with `--gap` seconds of digital silence after each, looped up to `--minutes`,
fed one chunk of audio at a time as fast as the decoder takes it (1 thread), as
`ume transcribe --stream -` is fed from a microphone. With the defaults of
`ume transcribe --stream` (endpointing: an utterance ends after 1 s of silence or 20 s, then
the decoder starts afresh); `--unbounded` switches endpointing off (the whole stream is one
utterance, as before endpointing existed).

Per minute of audio (rows): chunk_ms_p50 / chunk_ms_p95 (compute per chunk in that minute:
fbank -> encoder chunk -> CTC -> search, plus the final search of utterances that end),
rss_mb (resident memory at the minute's end), and the decoder's state at that point
(StreamingDecoder.state_size: attention-cache frames, encoder frames, fbank frames, tokens).

Example:
    ume bench stream --minutes 60 --json
    ume bench stream --minutes 3 --unbounded      # the growth endpointing removes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ume.bundled import DEMO, bundled_model
from ume.data.manifest import load_audio, load_manifest
from ume.data.synth import synthesize_slice
from ume.decode.streaming import SAMPLE_RATE, Endpoint, StreamingDecoder
from ume.decode.transcribe import Recognizer
from ume.errors import UmeError
from ume.machine import machine_info


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def stream_bench(
    model_dir: str,
    waves: list[np.ndarray],
    minutes: float,
    chunk_size: int = 16,
    left_chunks: int = -1,
    mode: str = "attention_rescoring",
    gap: float = 1.0,
    endpoint: Endpoint | None = Endpoint(),
) -> dict:
    """Feed the looped stream (see the module docstring); rows per minute of audio."""
    torch.set_num_threads(1)
    rec = Recognizer.load(model_dir)
    sd = StreamingDecoder(rec.model, rec.cfg.features, chunk_size, left_chunks, mode,
                          endpoint=endpoint)  # fmt: skip
    piece = sd.enc.stride * sd.shift
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    audio = np.concatenate([x for w in waves for x in (w, silence)])  # one loop
    total = int(minutes * 60 * SAMPLE_RATE)
    rows: list[dict] = []
    minute_ms: list[float] = []
    utterances = 0
    fed = 0
    t_start = time.perf_counter()
    while fed < total:
        i = fed % len(audio)
        x = audio[i : min(i + piece, len(audio), i + total - fed)]
        before = sd.num_chunks
        t0 = time.perf_counter()
        sd.accept(x)
        dt = time.perf_counter() - t0
        n = sd.num_chunks - before
        if n:  # the call's time (chunks + any final search) spread over its chunks
            minute_ms += [1000 * dt / n] * n
        utterances += len(sd.take_finished())
        fed += len(x)
        if fed // (60 * SAMPLE_RATE) > len(rows) or fed >= total:
            rows.append(
                {
                    "minute": round(fed / SAMPLE_RATE / 60, 2),
                    "chunks": len(minute_ms),
                    "chunk_ms_p50": round(statistics.median(minute_ms), 2) if minute_ms else None,
                    "chunk_ms_p95": round(float(np.percentile(minute_ms, 95)), 2)
                    if minute_ms
                    else None,
                    "rss_mb": round(rss_mb(), 1),
                    "utterances": utterances,
                    **sd.state_size(),
                }
            )
            minute_ms = []
    t0 = time.perf_counter()
    sd.finish()
    final_ms = 1000 * (time.perf_counter() - t0)
    return {
        "model": model_dir,
        "minutes": round(fed / SAMPLE_RATE / 60, 2),
        "mode": mode,
        "chunk_size": chunk_size,
        "chunk_audio_ms": round(1000 * piece / SAMPLE_RATE, 1),
        "left_chunks": left_chunks,
        "endpoint": None if endpoint is None else dataclasses.asdict(endpoint),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "final_ms": round(final_ms, 1),
        "rows": rows,
        "threads": 1,
        "machine": machine_info(),
    }


def add_long_stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="experiment dir (default: the bundled dense_paper, trained on the paper-test audio"
        " this benchmark synthesises)",
    )
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--data", help="Kaldi dir of utterances to loop (default: paper test slice)")
    p.add_argument("--utts", type=int, default=30, help="utterances to synthesise when no --data")
    p.add_argument("--gap", type=float, default=1.0, help="seconds of silence after each")
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--left-chunks", type=int, default=-1)
    p.add_argument("--mode", default="attention_rescoring")
    p.add_argument("--unbounded", action="store_true", help="no endpointing (one utterance)")
    p.add_argument("--workdir", help="where synthesised utterances go (default: temporary)")
    p.add_argument("--json", action="store_true")


def main_long_stream(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.gap < 0 or args.chunk_size <= 0:
        raise UmeError("--minutes and --chunk-size must be > 0, --gap >= 0")
    data = args.data
    if data is None:
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ume_str_"))
        data = str(synthesize_slice("paper", "test", args.utts, work))
    utts, _ = load_manifest(data)
    waves = [load_audio(u.wav) for u in utts]
    res = stream_bench(
        args.model or str(bundled_model(DEMO)), waves, args.minutes, args.chunk_size,
        args.left_chunks, args.mode, args.gap, None if args.unbounded else Endpoint(),
    )  # fmt: skip
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
        return 0
    print(f"{res['minutes']} min stream, {res['mode']}, chunk {res['chunk_audio_ms']} ms, "
          f"endpoint {res['endpoint']}, wall {res['wall_s']} s (1 thread)")  # fmt: skip
    print("minute  chunk_ms_p50  chunk_ms_p95  rss_mb  att_cache  enc_frames  feat_frames")
    for r in res["rows"]:
        print(f"{r['minute']:6.1f}  {r['chunk_ms_p50']:12}  {r['chunk_ms_p95']:12}  "
              f"{r['rss_mb']:6.0f}  {r['att_cache_frames']:9}  {r['encoder_frames']:10}  "
              f"{r['feature_frames']:11}")  # fmt: skip
    return 0
