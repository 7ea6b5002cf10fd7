"""`ume bench longaudio`: transcribe one long recording built from test utterances; peak memory,
speed, and the text against decoding the same utterances one by one.

The recording: the utterances of a Kaldi test dir (default: the paper preset's test split,
re-synthesised with `synthesize_slice`, the audio the bundled model's card is scored on), in
order, `--gap` seconds of digital silence between them, repeated from the first utterance
when they run out, up to `--minutes`; written as a 16 kHz 16-bit WAV block by block.

Measured:
    peak_rss_mb       peak resident memory of `ume transcribe` (a child process, ru_maxrss)
                      on that WAV, with --max-segment as given (0: the whole file at once)
    wall_s, rtf       its wall time, and wall time / audio time (model loading included)
    mer_vs_per_utt    MER (%) of its text against the per-utterance texts joined in order:
                      each utterance decoded alone (`transcribe_wave`, same mode), the
                      segmentation's best possible outcome
    mer_per_utt_shift_10ms  MER (%) of the same per-utterance decoding with each utterance's
                      first 10 ms left out, against the unshifted one: how much this model's
                      text changes when its input merely starts elsewhere (a segmenter cannot
                      cut exactly where the utterance files began)
    mer_long, mer_per_utt   MER (%) of both against the reference transcripts
    segments, seg_max_s, seg_median_s   from the --json output

Example:
    ume bench longaudio --minutes 10 --workdir work/long --json
    ume bench longaudio --minutes 60 --workdir work/long60     # the one-hour check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ume.bundled import DEMO, bundled_model
from ume.data.manifest import load_audio, load_manifest
from ume.data.synth import synthesize_slice
from ume.data.text import normalize_text, split_units
from ume.decode.metrics import ErrorCounts
from ume.decode.transcribe import Recognizer, transcribe_wave
from ume.errors import UmeError
from ume.machine import machine_info

RATE = 16000
AVG_UTT_SECONDS = 3.4  # paper-preset test utterances, for how many to synthesise


def test_utterances(data: str | None, minutes: float, work: Path) -> list[tuple[str, str, str]]:
    """(key, wav path, reference text) of the utterances the recording is built from."""
    if data is None:
        n = min(400, int(minutes * 60 / AVG_UTT_SECONDS * 1.15) + 5)  # paper test has 400
        data = str(synthesize_slice("paper", "test", n, work / "utts"))
    utts, _ = load_manifest(data)
    return [(u.key, u.wav, u.text) for u in utts]


def build_recording(
    utts: list[tuple[str, str, str]], minutes: float, gap: float, out: Path
) -> list[str]:
    """Write the long WAV (see the module docstring); returns the keys in recording order."""
    target = int(minutes * 60 * RATE)
    silence = np.zeros(int(gap * RATE), np.float32)
    order: list[str] = []
    written = 0
    waves: dict[str, np.ndarray] = {}
    with sf.SoundFile(out, "w", RATE, 1, subtype="PCM_16") as f:
        while written < target:
            for key, wav, _ in utts:
                if written >= target:
                    break
                if key not in waves:
                    waves[key] = load_audio(wav)
                f.write(waves[key])
                f.write(silence)
                written += len(waves[key]) + len(silence)
                order.append(key)
    return order


def per_utterance_texts(
    model_dir: str, utts: list[tuple[str, str, str]], mode: str, keys: set[str], skip: int = 0
) -> dict[str, str]:
    """Each utterance decoded alone, as `ume transcribe` decodes a short file; `skip`: first
    drop that many samples (the model's sensitivity to where its input starts)."""
    rec = Recognizer.load(model_dir)
    out = {}
    for key, wav, _ in utts:
        if key in keys:
            out[key] = transcribe_wave(rec, load_audio(wav)[skip:], mode)["text"]
    return out


def run_transcribe(model_dir: str, wav: Path, mode: str, max_segment: float, work: Path) -> dict:
    """`ume transcribe --json` in a child process: its output, peak RSS (MB), wall seconds."""
    cmd = [sys.executable, "-m", "ume.cli", "transcribe", "--model", model_dir, "--mode", mode]
    cmd += ["--max-segment", str(max_segment), "--threads", "1", "--json", str(wav)]
    out_path, err_path = work / "transcribe.jsonl", work / "transcribe.err"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err_path.read_text()[-3000:]}")
    obj = json.loads(out_path.read_text(encoding="utf-8").splitlines()[0])
    return {"result": obj, "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall}


def mer(ref: str, hyp: str) -> float:
    c = ErrorCounts()
    c.add(split_units(normalize_text(ref)), split_units(normalize_text(hyp)))
    return round(c.rate, 2)


def long_audio_bench(
    model_dir: str,
    minutes: float,
    work: Path,
    data: str | None = None,
    gap: float = 0.3,
    mode: str = "attention_rescoring",
    max_segment: float = 20.0,
) -> dict:
    """Build the recording, transcribe it, compare (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    utts = test_utterances(data, minutes, work)
    wav = work / f"long_{minutes:g}min.wav"
    order = build_recording(utts, minutes, gap, wav)
    torch.set_num_threads(1)
    per_utt = per_utterance_texts(model_dir, utts, mode, set(order))
    shifted = per_utterance_texts(model_dir, utts, mode, set(order), skip=RATE // 100)
    refs = {k: t for k, _, t in utts}
    run = run_transcribe(model_dir, wav, mode, max_segment, work)
    long_text = run["result"]["text"]
    segs = run["result"]["segments"]
    lens = [s["end"] - s["start"] for s in segs] or [0.0]
    audio_s = sf.info(str(wav)).duration
    joined = " ".join(per_utt[k] for k in order)
    return {
        "model": model_dir,
        "minutes": round(audio_s / 60, 2),
        "utterances": len(order),
        "distinct_utterances": len(set(order)),
        "gap_s": gap,
        "mode": mode,
        "max_segment_s": max_segment,
        "segments": len(segs),
        "seg_max_s": round(max(lens), 2),
        "seg_median_s": round(statistics.median(lens), 2),
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "wall_s": round(run["wall_s"], 1),
        "rtf": round(run["wall_s"] / audio_s, 4),
        "mer_vs_per_utt": mer(joined, long_text),
        "mer_per_utt_shift_10ms": mer(joined, " ".join(shifted[k] for k in order)),
        "mer_long": mer(" ".join(refs[k] for k in order), long_text),
        "mer_per_utt": mer(" ".join(refs[k] for k in order), joined),
        "threads": 1,
        "machine": machine_info(),
    }


def add_long_audio_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="experiment dir (default: the bundled dense_paper, trained on the paper-test audio"
        " this benchmark synthesises)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="length of the recording")
    p.add_argument("--data", help="Kaldi test dir to build it from (default: paper test slice)")
    p.add_argument("--gap", type=float, default=0.3, help="seconds of silence between utterances")
    p.add_argument("--mode", default="attention_rescoring")
    p.add_argument("--max-segment", type=float, default=20.0, help="0: decode the file whole")
    p.add_argument("--workdir", help="where the WAV and outputs go (default: a temporary dir)")
    p.add_argument("--json", action="store_true")


def main_long_audio(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.gap < 0:
        raise UmeError(f"--minutes {args.minutes} must be > 0 and --gap {args.gap} >= 0")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ume_long_"))
    model = args.model or str(bundled_model(DEMO))
    res = long_audio_bench(
        model, args.minutes, work, args.data, args.gap, args.mode, args.max_segment
    )
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        print(
            f"{res['minutes']} min ({res['utterances']} utterances), {res['segments']} segments "
            f"(max {res['seg_max_s']} s): peak RSS {res['peak_rss_mb']:.0f} MB, "
            f"RTF {res['rtf']}, MER vs per-utterance decoding {res['mer_vs_per_utt']}% "
            f"(per-utterance vs itself shifted 10 ms: {res['mer_per_utt_shift_10ms']}%) "
            f"(vs reference: long {res['mer_long']}%, per-utterance {res['mer_per_utt']}%)"
        )
    return 0
