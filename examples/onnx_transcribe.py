"""Transcribe a wav file with the graphs `ume export` writes, without torch or ume.

Needs only onnxruntime, numpy, kaldi-native-fbank and soundfile (+ soxr for other sample
rates). Reads, from the directory of the ONNX file: tokens.json, features.json, runtime.json
(and the streaming graph for --stream). CTC greedy search, so the text equals
`ume transcribe --mode ctc_greedy FILE` (full context), or with --stream that of
`ume transcribe --mode ctc_greedy --stream --chunk-size N FILE` (N = the exported chunk).

With --stream an utterance ends, as in `ume transcribe --stream`, after --endpoint-silence
seconds (default 1) of CTC blanks following speech, after max(5, --endpoint-silence) seconds of
blanks alone, or at --max-utterance seconds (default 20): its text is printed (`FILE<TAB>text`,
one line per utterance) and the caches, offset and path start afresh, so the state of a stream
of any length stays bounded (the attention cache holds at most --max-utterance seconds, or the
left chunks the graph was exported with). `--endpoint-silence 0 --max-utterance 0`: the whole
stream is one utterance and its cache grows with it.

Usage:
    ume export --model EXPDIR --out deploy/encoder.onnx
    python examples/onnx_transcribe.py deploy/encoder.onnx speech.wav [--stream]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort
import soundfile as sf


def read_wave(path: str, rate: int) -> np.ndarray:
    """Mono float32 at `rate` (channels averaged, resampled with soxr if needed)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != rate:
        import soxr

        wave = soxr.resample(wave, sr, rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def fbank(wave: np.ndarray, fc: dict) -> np.ndarray:
    """(T, num_mel_bins) float32 log-mel fbank as ume computes it (features.json)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(fc["sample_rate"])
    opts.frame_opts.frame_shift_ms = float(fc["frame_shift_ms"])
    opts.frame_opts.frame_length_ms = float(fc["frame_length_ms"])
    opts.frame_opts.dither = float(fc["dither"])
    opts.frame_opts.snip_edges = bool(fc["snip_edges"])
    opts.mel_opts.num_bins = int(fc["num_mel_bins"])
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(float(fc["sample_rate"]), (wave * fc["wave_scale"]).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, int(fc["num_mel_bins"])), np.float32)
    feats = np.stack([np.asarray(fb.get_frame(i), np.float32) for i in range(n)])
    if fc.get("round_to_float16"):
        feats = feats.astype(np.float16).astype(np.float32)
    return feats


def detokenize(ids: list[int], tk: dict) -> str:
    """Token ids -> text: CJK characters joined without spaces, English words with one."""
    units: list[list] = []  # [text, is a CJK character]
    in_word = False
    ws = tk["word_start"]
    for i in ids:
        if i in (tk["blank"], tk["unk"], tk["sos_eos"], tk.get("eos", tk["sos_eos"])):
            continue
        u = tk["units"][i]
        if tk["is_char"][i]:
            units.append([u, True])
            in_word = False
        elif u.startswith(ws) or not in_word:
            units.append([u.lstrip(ws), False])
            in_word = True
        else:
            units[-1][0] += u
    out, prev_char = [], True
    for k, (u, char) in enumerate(x for x in units if x[0]):
        if k > 0 and not (char or prev_char):
            out.append(" ")
        out.append(u)
        prev_char = char
    return "".join(out)


def greedy(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """(T, V) -> best path with repeats merged and blanks removed."""
    return collapse(log_probs.argmax(-1).tolist(), blank)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Endpoint:
    """When an utterance ends (seconds; 0 switches a rule off): silence counts encoder frames
    whose best CTC label is blank. The rules of ume's streaming decoder (ume.decode.streaming).
    """

    silence_after_speech: float = 1.0
    silence_alone: float = 5.0
    max_utterance: float = 20.0


def stream_utterances(
    sess,  # noqa: ANN001 - an onnxruntime session of the streaming graph
    rt: dict,
    feats: np.ndarray,
    frame_seconds: float,
    endpoint: Endpoint | None = None,
    sizes: list[int] | None = None,
) -> Iterator[list[int]]:
    """Chunk by chunk through the streaming graph; yields the token ids of each utterance as
    an endpoint closes it (the last one at the end of feats; one empty result when the stream
    gave none). `sizes`, if given, gets the attention cache's frame count after every chunk."""
    names = {i.name for i in sess.get_inputs()}  # offset is pruned when unused
    emitted = 0

    def fresh() -> tuple:  # caches, encoder frames so far, greedy path, trailing blanks, heard
        return (
            np.zeros(rt["att_cache"], np.float32),
            np.zeros(rt["cnn_cache"], np.float32),
            0,
            [],
            0,
            False,
        )

    att, cnn, done, path, blank_run, heard = fresh()
    start = 0
    while feats.shape[0] - start >= rt["min_input"]:  # one chunk's window at a time
        window = feats[start : start + rt["window"]][None]
        feed = {"feats": window, "att_cache": att, "cnn_cache": cnn,
                "offset": np.array([done], np.int64)}  # fmt: skip
        _, lp, att, cnn = sess.run(None, {k: v for k, v in feed.items() if k in names})
        best = lp[0].argmax(-1).tolist()
        path += best
        done += len(best)
        for b in best:
            blank_run = blank_run + 1 if b == 0 else 0
            heard |= b != 0
        start += rt["stride"]
        if sizes is not None:
            sizes.append(int(att.shape[2]))
        if endpoint is not None and _is_endpoint(endpoint, done, blank_run, heard, frame_seconds):
            ids = collapse(path)
            if ids:
                emitted += 1
                yield ids
            att, cnn, done, path, blank_run, heard = fresh()
    ids = collapse(path)
    if ids or emitted == 0:
        yield ids


def _is_endpoint(ep: Endpoint, frames: int, blank_run: int, heard: bool, sec: float) -> bool:
    if ep.max_utterance > 0 and frames * sec >= ep.max_utterance:
        return True
    if heard:
        return ep.silence_after_speech > 0 and blank_run * sec >= ep.silence_after_speech
    return ep.silence_alone > 0 and blank_run * sec >= ep.silence_alone


def collapse(path: list[int], blank: int = 0) -> list[int]:
    """Frame-level CTC path -> tokens (repeats merged, blanks removed)."""
    ids, prev = [], blank
    for s in path:
        if s != prev and s != blank:
            ids.append(s)
        prev = s
    return ids


def make_endpoint(silence: float, max_utterance: float) -> Endpoint | None:
    """`ume transcribe --stream`'s endpoint from its two options (None: both off)."""
    if silence <= 0 and max_utterance <= 0:
        return None
    return Endpoint(silence, max(5.0, silence), max_utterance)


def transcribe(
    onnx_path: str, wav: str, stream: bool = False, endpoint: Endpoint | None = None
) -> list[str]:
    """Texts of one file: one for full context; with `stream`, one per utterance."""
    d = Path(onnx_path).parent
    rt = json.loads((d / "runtime.json").read_text())
    fc = json.loads((d / rt["features"]).read_text())
    tk = json.loads((d / rt["tokens"]).read_text(encoding="utf-8"))
    feats = fbank(read_wave(wav, fc["sample_rate"]), fc)  # (T, F)
    if feats.shape[0] < rt.get("min_input", 1):
        return [""]
    if not stream:
        sess = session(Path(onnx_path))
        feed = {"feats": feats[None], "feats_len": np.array([feats.shape[0]], np.int64)}
        _, lp, _ = sess.run(None, feed)
        return [detokenize(greedy(lp[0]), tk)]
    sess = session(d / rt["files"]["stream"])
    frame_seconds = rt["subsampling"] * fc["frame_shift_ms"] / 1000.0  # one encoder frame
    utts = stream_utterances(sess, rt, feats, frame_seconds, endpoint)
    return [detokenize(ids, tk) for ids in utts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", help="the full-context ONNX file `ume export` wrote")
    ap.add_argument("wavs", nargs="+")
    ap.add_argument("--stream", action="store_true", help="chunk graph with caches")
    ap.add_argument(
        "--endpoint-silence",
        type=float,
        default=1.0,
        help="--stream: seconds of silence after speech that end an utterance; 0 = off",
    )
    ap.add_argument(
        "--max-utterance",
        type=float,
        default=20.0,
        help="--stream: seconds after which an utterance ends anyway; 0 = off",
    )
    args = ap.parse_args()
    endpoint = make_endpoint(args.endpoint_silence, args.max_utterance)
    for w in args.wavs:
        for text in transcribe(args.onnx, w, args.stream, endpoint):
            print(f"{w}\t{text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
