"""What an ONNX runtime needs beside the graphs: the streaming (chunk + cache) encoder graph,
units, feature config and CMVN. `ume export` writes, next to OUT.onnx (full context):

    OUT_stream.onnx   one chunk: inputs  feats (1, W, 80) raw fbank window (CMVN inside),
                                         att_cache (N, H, Tc, 2·d_k), cnn_cache (N, D, K-1),
                                         offset (1,) int64 encoder frames before the chunk
                                outputs  encoder_out (1, c, D), ctc_log_probs (1, c, V),
                                         new_att_cache, new_cnn_cache
    tokens.json       units (id order), which units are CJK characters, blank / unk / sos / eos
                      ids, the word-start mark: enough to turn ids into text
    units.txt         "unit id" per line (WeNet's format)
    features.json     fbank options (kaldi-native-fbank), sample rate, float16 rounding
    cmvn.json         global mean / istd (also inside the graphs; for runtimes that want it)
    runtime.json      file names, chunk size, window and stride in fbank frames, left chunks,
                      subsampling rate, cache shapes

examples/onnx_transcribe.py reads exactly these files (onnxruntime + numpy +
kaldi-native-fbank + soundfile only) and gives `ume transcribe --mode ctc_greedy`'s text.

Example:
    >>> write_runtime_files(cfg, tok, model, "deploy/encoder.onnx", chunk_size=16)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ume.atomic import atomic_write_json, atomic_write_text
from ume.config import ExperimentConfig
from ume.data.text import is_cjk
from ume.data.tokenizer import WORD_START, Tokenizer
from ume.decode.onnx_trace import trace_to_onnx
from ume.model.asr import ASRModel
from ume.model.streaming import ChunkEncoder


class StreamForExport(torch.nn.Module):
    """ChunkEncoder + CTC log-probs, the streaming graph's computation."""

    def __init__(self, enc: ChunkEncoder) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, feats, att_cache, cnn_cache, offset):  # noqa: D102 - shapes above
        out, att, cnn = self.enc(feats, att_cache, cnn_cache, offset)
        return out, self.enc.model.ctc_log_probs(out), att, cnn


def export_streaming(
    model: ASRModel, out: str | Path, chunk_size: int = 16, left_chunks: int = -1
) -> Path:
    """Trace the chunk encoder (with a non-empty cache, dynamic lengths) into ONNX."""
    out = Path(out)
    enc = ChunkEncoder(model.eval(), chunk_size, left_chunks)
    att, cnn = enc.init_cache()
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, enc.window, model.cfg.encoder.input_dim, generator=g)
    att = torch.randn(att.size(0), att.size(1), 2 * chunk_size, att.size(3), generator=g)
    offset = torch.tensor([2 * chunk_size], dtype=torch.int64)
    trace_to_onnx(
        StreamForExport(enc).eval(),
        (feats, att, cnn, offset),
        out,
        ["feats", "att_cache", "cnn_cache", "offset"],
        ["encoder_out", "ctc_log_probs", "new_att_cache", "new_cnn_cache"],
        {
            "feats": {1: "W"},
            "att_cache": {2: "T_cache"},
            "encoder_out": {1: "c"},
            "ctc_log_probs": {1: "c"},
            "new_att_cache": {2: "T_cache_out"},
        },
    )
    return out


def write_runtime_files(
    cfg: ExperimentConfig,
    tok: Tokenizer,
    model: ASRModel,
    onnx_path: str | Path,
    chunk_size: int = 16,
    left_chunks: int = -1,
    stream: bool = True,
) -> dict:
    """Write the streaming graph (if `stream`) and the runtime files next to onnx_path."""
    onnx_path = Path(onnx_path)
    d = onnx_path.parent
    d.mkdir(parents=True, exist_ok=True)
    files: dict = {"full": onnx_path.name}
    if stream:
        sp = export_streaming(model, d / f"{onnx_path.stem}_stream.onnx", chunk_size, left_chunks)
        files["stream"] = sp.name
    is_char = [len(u) == 1 and is_cjk(u) for u in tok.units]  # as the Tokenizer decides
    tokens = {
        "units": tok.units,
        "is_char": is_char,
        "blank": 0,
        "unk": 1,
        "sos_eos": model.sos,  # <sos> (= <eos> unless both are given below)
        "sos": model.sos,
        "eos": model.eos,
        "word_start": WORD_START,
    }
    atomic_write_text(d / "tokens.json", json.dumps(tokens, ensure_ascii=False))
    atomic_write_text(d / "units.txt", "".join(f"{u} {i}\n" for i, u in enumerate(tok.units)))
    f = cfg.features
    feats = {
        "sample_rate": 16000,
        "num_mel_bins": f.num_mel_bins,
        "frame_shift_ms": f.frame_shift_ms,
        "frame_length_ms": f.frame_length_ms,
        "dither": 0.0,
        "snip_edges": True,
        "wave_scale": 32768.0,  # float samples in [-1, 1] are scaled to the int16 range
        "round_to_float16": True,  # ume stores and decodes fbank as float16
    }
    atomic_write_json(feats, d / "features.json", indent=1)
    cmvn = {"mean": model.cmvn_mean.tolist(), "istd": model.cmvn_istd.tolist()}
    atomic_write_json(cmvn, d / "cmvn.json", indent=None)
    runtime = {"files": files, "tokens": "tokens.json", "features": "features.json"}
    if stream:
        enc = ChunkEncoder(model, chunk_size, left_chunks)
        runtime.update(
            chunk_size=chunk_size,
            left_chunks=left_chunks,
            window=enc.window,
            stride=enc.stride,
            min_input=enc.min_input,
            subsampling=model.encoder.embed.rate,
            att_cache=[enc.num_blocks, enc.heads, 0, 2 * enc.d_k],
            cnn_cache=[enc.num_blocks, enc.d_model, enc.conv_ctx],
        )
    atomic_write_json(runtime, d / "runtime.json", indent=1)
    return runtime
