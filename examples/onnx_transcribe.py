"""Transcribe a wav file with the graphs `ume export` writes, without torch or ume.

Needs only onnxruntime, numpy, kaldi-native-fbank and soundfile (+ soxr for other sample
rates). Reads, from the directory of the ONNX file: tokens.json, features.json, runtime.json
(and the streaming graph for --stream). CTC greedy search, so the text equals
`ume transcribe --mode ctc_greedy FILE` (full context), or with --stream that of
`ume transcribe --mode ctc_greedy --stream --chunk-size N FILE` (N = the exported chunk).

Usage:
    ume export --model EXPDIR --out deploy/encoder.onnx
    python examples/onnx_transcribe.py deploy/encoder.onnx speech.wav [--stream]
"""

from __future__ import annotations

import argparse
import json
import sys
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
    ids, prev = [], blank
    for s in log_probs.argmax(-1).tolist():
        if s != prev and s != blank:
            ids.append(s)
        prev = s
    return ids


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def transcribe(onnx_path: str, wav: str, stream: bool = False) -> str:
    d = Path(onnx_path).parent
    rt = json.loads((d / "runtime.json").read_text())
    fc = json.loads((d / rt["features"]).read_text())
    tk = json.loads((d / rt["tokens"]).read_text(encoding="utf-8"))
    feats = fbank(read_wave(wav, fc["sample_rate"]), fc)  # (T, F)
    if feats.shape[0] < rt.get("min_input", 1):
        return ""
    if not stream:
        sess = session(Path(onnx_path))
        feed = {"feats": feats[None], "feats_len": np.array([feats.shape[0]], np.int64)}
        _, lp, _ = sess.run(None, feed)
        return detokenize(greedy(lp[0]), tk)
    sess = session(d / rt["files"]["stream"])
    att = np.zeros(rt["att_cache"], np.float32)
    cnn = np.zeros(rt["cnn_cache"], np.float32)
    path: list[np.ndarray] = []
    done, start = 0, 0
    while feats.shape[0] - start >= rt["min_input"]:  # one chunk's window at a time
        window = feats[start : start + rt["window"]][None]
        feed = {"feats": window, "att_cache": att, "cnn_cache": cnn,
                "offset": np.array([done], np.int64)}  # fmt: skip
        names = {i.name for i in sess.get_inputs()}  # offset is pruned when unused
        _, lp, att, cnn = sess.run(None, {k: v for k, v in feed.items() if k in names})
        path.append(lp[0])
        done += lp.shape[1]
        start += rt["stride"]
    return detokenize(greedy(np.concatenate(path)), tk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", help="the full-context ONNX file `ume export` wrote")
    ap.add_argument("wavs", nargs="+")
    ap.add_argument("--stream", action="store_true", help="chunk graph with caches")
    args = ap.parse_args()
    for w in args.wavs:
        print(f"{w}\t{transcribe(args.onnx, w, args.stream)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
