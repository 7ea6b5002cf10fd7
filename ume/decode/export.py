"""ONNX export of the encoder + CTC head (MoE layers included), with an onnxruntime check.

`ume export --model EXPDIR --out encoder.onnx [--check]` writes a graph with

    inputs   feats (1, T, 80) raw fbank (CMVN is inside the graph), feats_len (1,) int64
    outputs  encoder_out (1, T', D), ctc_log_probs (1, T', V), encoder_out_lens (1,)

and a dynamic time axis (full-context attention). It uses the TorchScript-based exporter
(dynamo=False), opset 17. The encoder is re-walked by `EncoderForExport` with traced sizes
(the eager helpers turn the time length into a Python int, which tracing would freeze).

MoE layers (`--moe-op`):
    fused     one onnxruntime `com.microsoft.MoE` contrib node per layer (ume/decode/onnx_moe.py):
              routing, top-k, expert FFNs and the gated sum in one kernel (groups = 1 only).
              Not the default: on the CPU provider at batch 1 it measured no faster than the
              portable graph (docs/PERFORMANCE.md); its int8 form (QMoE) is `--int8`'s.
    portable  (default) standard ONNX ops only, any runtime. The MoE layers switch to an
              export-friendly dispatch while tracing (their sorted, variable-size expert blocks
              come from `.tolist()`, which tracing would freeze), `--moe-path`:
        "masked" (default)  per expert: rows routed to it (NonZero), its FFN, a gated
                            scatter-add; the same FLOPs as eager, dynamic shapes in the graph
        "dense"             every expert on every frame, then a gather of each frame's top-k
                            (E/k times the expert FLOPs, static shapes)
All compute what the eager layer computes (tests/test_bench.py, tests/test_onnx_moe.py).

Streaming (OUT_stream.onnx, `--stream-chunk`, default 16) needs a causal convolution
(`encoder.causal_conv: true`; WeNet's `causal: true`). A non-causal model (WeNet's default)
gets the full-context graph and the runtime files only, and the output says why; asking for
`--stream-chunk N` explicitly on such a model is an error, before anything is written.

Everything is written into a staging dir next to the output dir and moved into place only
when complete: a failed export leaves the output dir as it was.

`--check` runs onnxruntime on a few utterances (fbank of --data wavs, or random fbank),
requires its outputs to equal eager PyTorch within 1e-4 (encoder output, CTC posteriors; the
same CTC argmax per frame), and reports encoder+CTC RTF of both.

Example:
    ume export --model runs/ume --out ume_encoder.onnx --check --data data/quick/test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ume.atomic import fsync_tree, publish
from ume.decode.onnx_moe import (
    MOE_OPS,
    fused_moe_layers,
    fused_moe_supported,
    model_why_not_fused,
)
from ume.decode.onnx_trace import trace_to_onnx
from ume.model.asr import ASRModel
from ume.model.attention import sinusoid
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
    return sinusoid(rel, d_model).unsqueeze(0)  # (1, 2T-1 or T, D)


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


def resolve_moe_op(model: nn.Module, requested: str | None = None) -> str:
    """The MoE export kind for this model, fused or portable. requested None: portable (on
    onnxruntime's CPU provider at batch 1 the fused kernel measured no faster: it repacks
    every expert's weights on each call, docs/PERFORMANCE.md). requested "fused" on a model or onnxruntime
    that cannot run it exactly: ValueError saying why and what to do."""
    if requested is not None and requested not in MOE_OPS:
        raise ValueError(f"--moe-op {requested!r}: use one of {', '.join(MOE_OPS)}")
    if requested in (None, "portable"):
        return "portable"
    if not any(isinstance(m, MoEFeedForward) for m in model.modules()):
        return "portable"  # nothing to fuse: the dense graph is the same either way
    reason = model_why_not_fused(model)
    if reason is None and not fused_moe_supported():
        reason = (
            "the installed onnxruntime does not run the com.microsoft.MoE contrib op on the CPU "
            "(it needs onnxruntime >= 1.20; `pip install -U onnxruntime`)"
        )
    if reason is not None:
        raise ValueError(f"--moe-op fused: {reason}; export with --moe-op portable instead")
    return "fused"


@contextlib.contextmanager
def moe_export_mode(model: nn.Module, moe_op: str, moe_path: str = "masked") -> Iterator[None]:
    """Inside the block, tracing `model` writes its MoE layers as `moe_op` ("fused": one
    com.microsoft.MoE node each; "portable": standard ops with dispatch `moe_path`)."""
    if moe_op == "fused":
        with fused_moe_layers(model):
            yield
    elif moe_op == "portable":
        set_moe_export_dispatch(model, moe_path)
        yield
    else:
        raise ValueError(f"moe_op {moe_op!r}: use one of {', '.join(MOE_OPS)}")


def export_encoder(
    model: ASRModel,
    out: str | Path,
    moe_path: str = "masked",
    example_frames: int = 400,
    moe_op: str | None = None,
) -> Path:
    """Write the full-context ONNX graph; returns its path. moe_op None: `resolve_moe_op`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    moe_op = resolve_moe_op(model, moe_op)
    wrapper = EncoderForExport(model).eval()
    feats = torch.randn(1, example_frames, model.cfg.encoder.input_dim)
    lens = torch.tensor([example_frames], dtype=torch.int64)
    with moe_export_mode(model, moe_op, moe_path):
        trace_to_onnx(
            wrapper,
            (feats, lens),
            out,
            ["feats", "feats_len"],
            ["encoder_out", "ctc_log_probs", "encoder_out_lens"],
            {"feats": {1: "T"}, "encoder_out": {1: "T_out"}, "ctc_log_probs": {1: "T_out"}},
        )
    return out


@contextlib.contextmanager
def staged_output(target_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging dir on `target_dir`'s filesystem; on a normal exit its files
    are moved into `target_dir` (the whole dir renamed when `target_dir` does not exist yet,
    else file by file, each file complete); on an exception nothing is moved
    and `target_dir` is left as it was. The staging dir (hidden: beside a new `target_dir`,
    inside an existing one) is removed either way."""
    target = Path(target_dir).resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file: the output file's parent must be a directory")
    home = target if target.exists() else target.parent
    home.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=home))
    try:
        yield stage
        fsync_tree(stage)
        if not target.exists():
            publish(stage, target)
            return
        for f in sorted(stage.iterdir()):
            publish(f, target / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def streaming_chunk(model: ASRModel, requested: int | None) -> tuple[int, str | None]:
    """The streaming graph's chunk size (0: none) and, when none is written, why.
    requested None: 16 for a causal model, else 0 with the reason. An explicit chunk > 0 for
    a non-causal model: ValueError (nothing has been written yet)."""
    causal = model.encoder.cfg.causal_conv
    why = (
        "this model's convolution is not causal (encoder.causal_conv: false; WeNet: "
        "encoder_conf.causal: false), so a chunk would need frames of the next chunk. The "
        "full-context graph is exported. For a streaming graph, train or fine-tune the model "
        "with encoder.causal_conv: true (WeNet: causal: true); `ume decode --chunk-size N` "
        "decodes this one with chunk masks in PyTorch"
    )
    if requested is None:
        return (16, None) if causal else (0, why)
    if requested > 0 and not causal:
        raise ValueError(f"--stream-chunk {requested}: {why}; export without --stream-chunk")
    return max(requested, 0), None if requested > 0 else "--stream-chunk 0"


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
    moe_op = resolve_moe_op(model, getattr(args, "moe_op", None))  # errors before any write
    chunk, no_stream = streaming_chunk(model, args.stream_chunk)
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: name the ONNX file to write, e.g. deploy/encoder.onnx")
    with staged_output(out.parent) as stage:
        staged = export_encoder(model, stage / out.name, args.moe_path, moe_op=moe_op)
        if chunk > 0:  # + streaming graph, units, features, CMVN
            from ume.decode.deploy import write_runtime_files

            with moe_export_mode(model, moe_op, args.moe_path):
                write_runtime_files(cfg, tok, model, staged, chunk, args.left_chunks)
        elif no_stream is not None and args.stream_chunk is None:  # non-causal: runtime files
            from ume.decode.deploy import write_runtime_files

            write_runtime_files(cfg, tok, model, staged, stream=False)
        quantized = {}
        if getattr(args, "int8", False):  # the graphs are replaced by their int8 copies
            from ume.decode.quantize import quantize_graph

            for g in (staged, staged.with_name(f"{staged.stem}_stream.onnx")):
                if g.is_file():
                    q = g.with_name(g.stem + ".int8.tmp")
                    quantized[g.name] = quantize_graph(g, q)
                    publish(q, g)
    path = out
    res: dict = {
        "model": args.model,
        "out": str(path),
        "bytes": path.stat().st_size,
        "moe_op": moe_op,
        "moe_path": args.moe_path if moe_op == "portable" else None,
        "moe_layers": sum(isinstance(m, MoEFeedForward) for m in model.modules()),
        "streaming": f"{out.stem}_stream.onnx, chunk {chunk}" if chunk > 0 else None,
        "opset": 17,
    }
    if quantized:
        res["int8"] = quantized
    if no_stream is not None and args.stream_chunk is None:
        res["streaming_not_written"] = no_stream
    if args.check:
        feats = _feats_list(args.model, args.data, args.utts, cfg.model.encoder.input_dim, 0)
        res.update(check_export(model, path, feats, torch.get_num_threads()))
        if quantized:  # int8 changes values by design: reported, not held to atol
            res["ok"] = True
            res["int8_note"] = "differences reported only; the int8 cost is measured as MER"
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
    p.add_argument(
        "--moe-op",
        choices=MOE_OPS,
        default=None,
        help="MoE layers as onnxruntime's fused com.microsoft.MoE contrib op (one node per "
        "layer; groups 1 only) or as portable standard ONNX ops (default; any runtime, and "
        "no slower on onnxruntime's CPU provider, docs/PERFORMANCE.md)",
    )
    p.add_argument(
        "--moe-path",
        default="masked",
        choices=["masked", "dense"],
        help="--moe-op portable: per-expert gather/scatter (masked) or every expert on "
        "every frame (dense, static shapes)",
    )
    p.add_argument(
        "--stream-chunk",
        type=int,
        default=None,
        help="also write OUT_stream.onnx (chunk encoder + caches) with this chunk size "
        "(encoder frames) and the runtime files (tokens, features, CMVN); 0 = off. "
        "Default: 16 for a causal model; a non-causal one gets no streaming graph (see "
        "the output's streaming_not_written)",
    )
    p.add_argument("--left-chunks", type=int, default=-1, help="streaming graph: left chunks")
    p.add_argument(
        "--int8",
        action="store_true",
        help="write int8 graphs: dense layers dynamically quantised (onnxruntime.quantization), "
        "fused MoE layers as 8-bit QMoE (ume/decode/quantize.py; accuracy cost in "
        "docs/PERFORMANCE.md)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads")
