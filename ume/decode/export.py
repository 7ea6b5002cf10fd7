"""ONNX export of the encoder + CTC head (MoE layers included), with an onnxruntime check.

`ume export --model EXPDIR --out encoder.onnx [--check]` writes a graph with

    inputs   feats (1, T, 80) raw fbank (CMVN is inside the graph), feats_len (1,) int64
    outputs  encoder_out (1, T', D), ctc_log_probs (1, T', V), encoder_out_lens (1,)

and a dynamic time axis (full-context attention). It uses the TorchScript-based exporter
(dynamo=False), opset 17. The encoder is re-walked by `EncoderForExport` with traced sizes
(the eager helpers turn the time length into a Python int, which tracing would freeze).

MoE layers switch to an export-friendly dispatch while tracing (their sorted, variable-size
expert blocks come from `.tolist()`, which tracing would freeze too):
    "masked" (default)  per expert: rows routed to it (NonZero), its FFN, a gated scatter-add;
                        the same FLOPs as eager, dynamic shapes inside the graph
    "dense"             every expert on every frame, then a gather of each frame's top-k
                        (E/k times the expert FLOPs, static shapes)
Both compute exactly what the eager layer computes (tests/test_bench.py).

`--check` runs onnxruntime on a few utterances (fbank of --data wavs, or random fbank),
requires its outputs to equal eager PyTorch within 1e-4 (encoder output, CTC posteriors; the
same CTC argmax per frame), and reports encoder+CTC RTF of both.

Example:
    ume export --model runs/ume --out ume_encoder.onnx --check --data data/quick/test
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ume.decode.onnx_trace import trace_to_onnx
from ume.model.asr import ASRModel
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import set_dispatch_options


def rel_pos_encoding(
    t: torch.Tensor | int, d_model: int, pos_enc: str = "rel_shift"
) -> torch.Tensor:
    """(1, 2T-1, D) sinusoidal encodings of distances T-1 .. -(T-1): the same values as
    RelPositionalEncoding, built from a traced length (no Python ints, no slice writes).
    pos_enc "wenet": (1, T, D) encodings of absolute positions 0..T-1 (AbsPositionalEncoding)."""
    if pos_enc == "wenet":
        rel = torch.arange(0, t, dtype=torch.float32)
    else:
        rel = torch.arange(t - 1, -t, -1, dtype=torch.float32)
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    ang = rel.unsqueeze(1) * div  # (2T-1, D/2)
    pe = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(1)  # interleaved
    return pe.unsqueeze(0)


class EncoderForExport(nn.Module):
    """feats (B, T, F), feats_len (B,) -> encoder out, CTC log-probs, output lengths.
    Full context; the same modules and math as ASRModel.encode + ctc_log_probs."""

    def __init__(self, model: ASRModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, feats: torch.Tensor, feats_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        enc = m.encoder
        x = (feats - m.cmvn_mean) * m.cmvn_istd
        x, lens = enc.embed(x, feats_len)  # (B, T', D)
        t = x.size(1)
        valid = torch.arange(t, device=x.device).unsqueeze(0) < lens.unsqueeze(1)  # (B, T')
        att_mask = valid.unsqueeze(1) & valid.unsqueeze(2).new_ones(1, 1, 1)  # (B, 1, T')
        pos = rel_pos_encoding(t, enc.cfg.d_model, enc.cfg.pos_enc).to(x.dtype)
        for block in enc.blocks:
            x = block(x, valid, att_mask, pos)
        if enc.after_norm is not None:
            x = enc.after_norm(x)
        return x, m.ctc_log_probs(x), lens


def set_moe_export_dispatch(model: nn.Module, path: str) -> None:
    """Every MoE layer traces with `path` ("masked" or "dense"); eager dispatch is unchanged."""
    set_dispatch_options(model, export_path=path)


def export_encoder(
    model: ASRModel, out: str | Path, moe_path: str = "masked", example_frames: int = 400
) -> Path:
    """Write the ONNX graph; returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    set_moe_export_dispatch(model, moe_path)
    wrapper = EncoderForExport(model).eval()
    feats = torch.randn(1, example_frames, model.cfg.encoder.input_dim)
    lens = torch.tensor([example_frames], dtype=torch.int64)
    trace_to_onnx(
        wrapper,
        (feats, lens),
        out,
        ["feats", "feats_len"],
        ["encoder_out", "ctc_log_probs", "encoder_out_lens"],
        {"feats": {1: "T"}, "encoder_out": {1: "T_out"}, "ctc_log_probs": {1: "T_out"}},
    )
    return out


def ort_session(path: str | Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feats_list(model_dir: str | None, data: str | None, n: int, dim: int, seed: int) -> list:
    if data and model_dir:
        from ume.config import load_config
        from ume.data.features import compute_fbank
        from ume.data.manifest import load_audio, load_manifest

        cfg = load_config(Path(model_dir) / "config.yaml")
        utts, _ = load_manifest(data, require_text=False)
        return [
            torch.from_numpy(compute_fbank(load_audio(u.wav), cfg.features)).unsqueeze(0)
            for u in utts[:n]
        ]
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(150, 800, (n,), generator=g)]
    return [torch.randn(1, t, dim, generator=g) * 3 + 10 for t in lengths]


def check_export(
    model: ASRModel,
    onnx_path: str | Path,
    feats_list: list[torch.Tensor],
    threads: int,
    atol: float = 1e-4,
    repeats: int = 3,
) -> dict:
    """onnxruntime vs eager on each utterance (batch 1): max abs differences and RTFs
    (encoder + CTC seconds / audio seconds, best of `repeats`).

    Checked within atol: the encoder output and the CTC posteriors (probabilities), and the
    per-frame CTC argmax must be equal. The log-probabilities' max difference is reported but
    not checked: the encoder's float32 rounding differences (~1e-5) pass through the CTC
    projection into every logit, so the log-probability of a token at p ≈ 1e-17 moves as
    much as a likely one's, which cannot matter to decoding; a probability weights the same
    difference by p."""
    sess = ort_session(onnx_path, threads)
    model = model.eval()
    diff_enc = diff_ctc = diff_prob = 0.0
    greedy_equal = True
    t_eager = t_ort = 0.0
    frames = 0
    for feats in feats_list:
        lens = torch.tensor([feats.size(1)], dtype=torch.int64)
        feed = {"feats": feats.numpy(), "feats_len": lens.numpy()}
        with torch.inference_mode():
            enc, valid = model.encode(feats, lens)
            lp = model.ctc_log_probs(enc)
        o_enc, o_lp, o_lens = sess.run(None, feed)
        assert int(o_lens[0]) == int(valid.sum())
        diff_enc = max(diff_enc, float(np.abs(o_enc - enc.numpy()).max()))
        diff_ctc = max(diff_ctc, float(np.abs(o_lp - lp.numpy()).max()))
        diff_prob = max(diff_prob, float(np.abs(np.exp(o_lp) - lp.exp().numpy()).max()))
        greedy_equal &= bool(np.array_equal(o_lp.argmax(-1), lp.argmax(-1).numpy()))
        best_e = best_o = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.ctc_log_probs(model.encode(feats, lens)[0])
            t1 = time.perf_counter()
            sess.run(None, feed)
            t2 = time.perf_counter()
            best_e, best_o = min(best_e, t1 - t0), min(best_o, t2 - t1)
        t_eager += best_e
        t_ort += best_o
        frames += feats.size(1)
    audio = frames / 100.0
    return {
        "utts": len(feats_list),
        "audio_seconds": round(audio, 2),
        "max_abs_diff_encoder": diff_enc,
        "max_abs_diff_ctc": diff_ctc,  # log-probs: informational (see check_export)
        "max_abs_diff_ctc_prob": diff_prob,
        "ctc_greedy_equal": greedy_equal,
        "ok": diff_enc <= atol and diff_prob <= atol and greedy_equal,
        "atol": atol,
        "eager_rtf": round(t_eager / audio, 5),
        "onnx_rtf": round(t_ort / audio, 5),
        "onnx_vs_eager": round(t_ort / t_eager, 3),
        "threads": threads,
    }


def main_export(args: argparse.Namespace) -> int:
    from ume.expdir import load_experiment

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg, tok, model = load_experiment(args.model)
    path = export_encoder(model, args.out, args.moe_path)
    if getattr(args, "stream_chunk", 16) > 0:  # + streaming graph, units, features, CMVN
        from ume.decode.deploy import write_runtime_files

        write_runtime_files(cfg, tok, model, path, args.stream_chunk, args.left_chunks)
    res: dict = {
        "model": args.model,
        "out": str(path),
        "bytes": path.stat().st_size,
        "moe_path": args.moe_path,
        "moe_layers": sum(isinstance(m, MoEFeedForward) for m in model.modules()),
        "opset": 17,
    }
    if args.check:
        feats = _feats_list(args.model, args.data, args.utts, cfg.model.encoder.input_dim, 0)
        res.update(check_export(model, path, feats, torch.get_num_threads()))
    print(json.dumps(res, indent=2))
    return 0 if res.get("ok", True) else 1


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="experiment dir")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "wenet"],
        help="onnx: encoder + CTC graph; wenet: a WeNet model dir (final.pt, train.yaml, "
        "global_cmvn, units.txt) that WeNet's own code loads (ume/interop/wenet.py)",
    )
    p.add_argument("--out", required=True, help="ONNX file to write (a dir for --format wenet)")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with eager")
    p.add_argument("--data", help="Kaldi dir or data.list for --check (default: random fbank)")
    p.add_argument("--utts", type=int, default=5, help="utterances for --check")
    p.add_argument("--moe-path", default="masked", choices=["masked", "dense"])
    p.add_argument(
        "--stream-chunk",
        type=int,
        default=16,
        help="also write OUT_stream.onnx (chunk encoder + caches) with this chunk size "
        "(encoder frames) and the runtime files (tokens, features, CMVN); 0 = off",
    )
    p.add_argument("--left-chunks", type=int, default=-1, help="streaming graph: left chunks")
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads")
