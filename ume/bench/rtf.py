"""Real-time factor: processing seconds / audio seconds, at batch 1 and batch 16.

Timed work per batch: fbank of every utterance + encoder + search. Threads are fixed and
printed; the first batches are a warm-up and not timed. With --vs, a second model is measured
in the same run (same utterances, same threads) and the ratio printed.

Each model is measured in a fresh interpreter (`python -m ume.bench.rtf --worker`), so its
peak RSS (ru_maxrss) is its own: peak_rss_mb, and rss_delta_mb = peak minus the RSS before
the model was loaded (weights + activations + allocator slack). Besides full context
(--chunk-size, default 0: keys rtf_b1, rtf_b16) it times streaming with --stream-chunk
(default 16 encoder frames: keys rtf_b1_stream16, rtf_b16_stream16). With --vs every key X of
the second model is reported as vs_X and every RTF/memory pair as ratio_* (= model / vs).

With --onnx both models are also exported as `ume export` writes them (MoE layers as
--onnx-moe-op: portable or fused) and timed in onnxruntime at batch 1 in the same number of
alternating rounds (ume/bench/onnx_rtf.py: full context, and the streaming graph with
per-chunk p50/p95 when the models are causal): keys onnx_*. The printed table puts eager and
onnxruntime, full context and streaming, side by side, each with model / vs and its per-round
range.

With --device cuda the model runs on the GPU (fbank stays on the CPU, as in deployment) and
each batch ends with a CUDA synchronise, so the timings cover the GPU work.

Example:
    ume bench rtf --model runs/ume --vs runs/dense --data data/quick/test --json [--device cuda]
    ume bench rtf --model runs/ume --vs runs/dense --data data/test --threads 1 --onnx
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ume.data.features import compute_fbank
from ume.data.manifest import load_audio, load_manifest
from ume.decode.search import decode_batch
from ume.device import resolve_device
from ume.expdir import load_experiment
from ume.machine import machine_info
from ume.model.asr import ASRModel


@torch.inference_mode()
def measure_rtf(
    model: ASRModel,
    feat_cfg,
    waves: list,
    batch_size: int,
    mode: str = "ctc_greedy",
    chunk_size: int = 0,
    warmup_batches: int = 2,
) -> float:
    """RTF over `waves` (list of float32 arrays at 16 kHz), longest-first batches."""
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    device = model.cmvn_mean.device

    def run(batch: list[int]) -> None:
        feats = [torch.from_numpy(compute_fbank(waves[i], feat_cfg)) for i in batch]
        lens = torch.tensor([f.shape[0] for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (B, T, F)
        decode_batch(model, x.to(device), lens.to(device), mode, chunk_size=chunk_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # GPU work is asynchronous: time all of it

    for b in batches[:warmup_batches]:
        run(b)
    audio = sum(len(w) for w in waves) / 16000.0
    t0 = time.perf_counter()
    for b in batches:
        run(b)
    return (time.perf_counter() - t0) / audio


def rtf_for_dir(
    exp_dir: str, waves: list, mode: str, chunk: int, stream_chunk: int = 0, device: str = "cpu"
) -> dict:
    cfg, _, model = load_experiment(exp_dir)
    model.to(resolve_device(device))
    res = {
        "rtf_b1": measure_rtf(model, cfg.features, waves, 1, mode, chunk),
        "rtf_b16": measure_rtf(model, cfg.features, waves, 16, mode, chunk),
    }
    if stream_chunk > 0:
        for b in (1, 16):
            res[f"rtf_b{b}_stream{stream_chunk}"] = measure_rtf(
                model, cfg.features, waves, b, mode, stream_chunk
            )
        # real streaming (chunk encoder with caches): per-chunk compute and delay, ms
        from ume.decode.streaming import stream_latency

        lat = stream_latency(model, cfg.features, waves, stream_chunk, mode=mode)
        res.update({f"lat_stream{stream_chunk}_{k}": v for k, v in lat.items()})
    from ume.model.params import param_report

    rep = param_report(model)
    res["params_total"], res["params_active"] = rep["params_total"], rep["params_active"]
    return res


def load_waves(data: str, max_utts: int) -> list:
    utts, _ = load_manifest(data, require_text=False)
    utts = utts[:max_utts] if max_utts > 0 else utts
    return [load_audio(u.wav) for u in utts]


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(spec: dict) -> dict:
    """One model in this (fresh) process: RTFs plus its own memory."""
    torch.set_num_threads(spec["threads"])
    waves = load_waves(spec["data"], spec["max_utts"])
    base = _rss_mb()
    res = rtf_for_dir(
        spec["model"],
        waves,
        spec["mode"],
        spec["chunk"],
        spec["stream_chunk"],
        spec.get("device", "cpu"),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["peak_rss_mb"] = round(peak, 1)
    res["rss_delta_mb"] = round(peak - base, 1)
    return res


def measure_isolated(exp_dir: str, args: argparse.Namespace) -> dict:
    """rtf_for_dir for one experiment dir in a fresh interpreter (its own peak RSS)."""
    spec = {
        "model": str(exp_dir),
        "data": str(args.data),
        "max_utts": args.max_utts,
        "mode": args.mode,
        "chunk": args.chunk_size,
        "stream_chunk": getattr(args, "stream_chunk", 0),
        "threads": torch.get_num_threads(),
        "device": getattr(args, "device", "cpu"),
    }
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "ume.bench.rtf", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"RTF worker for {exp_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_rows(rows: list[dict]) -> dict:
    """One row from several rounds of one model: the median of every RTF, the rest (params,
    memory) from the first round."""
    import statistics

    out = dict(rows[0])
    for k in out:
        if k.startswith("rtf_"):
            out[k] = statistics.median(r[k] for r in rows)
    return out


def _latency_line(res: dict, p: str) -> str:
    """Streaming latency keys with prefix p -> one printed line (ms, p50/p95)."""
    parts = [f"{n} {res[p + n + '_ms_p50']:.1f}/{res[p + n + '_ms_p95']:.1f}" for n in
             ("chunk", "delay", "final")]  # fmt: skip
    return "\n  streaming latency ms p50/p95: " + "  ".join(parts) + "\n "


def main_rtf(args: argparse.Namespace) -> int:
    rounds = getattr(args, "rounds", 1)
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: need at least 1 measurement per model")
    device = resolve_device(getattr(args, "device", "cpu"))  # a clear error before any work
    torch.set_num_threads(args.threads)
    waves = load_waves(args.data, args.max_utts)
    stream = getattr(args, "stream_chunk", 0)
    res: dict = {
        "threads": torch.get_num_threads(),
        "utts": len(waves),
        "audio_seconds": round(sum(len(w) for w in waves) / 16000, 1),
        "mode": args.mode,
        "chunk_size": args.chunk_size,
        "stream_chunk": stream,
        "device": str(device),
        **machine_info(),
    }
    del waves
    res["rounds"] = rounds
    # Rounds alternate model, vs, model, vs, ...: machine-speed drift during the run hits both
    # alike, and the median of each RTF ignores a round disturbed by a neighbour.
    mine, theirs = [], []
    for _ in range(rounds):
        mine.append(measure_isolated(args.model, args))
        if args.vs:
            theirs.append(measure_isolated(args.vs, args))
    res.update(_median_rows(mine))
    rtf_keys = [k for k in res if k.startswith("rtf_")]
    mem_keys = ["peak_rss_mb", "rss_delta_mb", "params_active"]
    if args.vs:
        other = _median_rows(theirs)
        for k, v in other.items():
            res[f"vs_{k}"] = v
        for k in rtf_keys:  # ratio_b1, ratio_b16, ratio_b1_stream16, ...
            res["ratio_" + k.removeprefix("rtf_")] = res[k] / other[k]
            if rounds > 1:  # the spread says how far to trust the ratio on this machine
                res[f"ratio_{k.removeprefix('rtf_')}_per_round"] = [
                    round(a[k] / b[k], 3) for a, b in zip(mine, theirs)
                ]
        for k in mem_keys:
            res[f"ratio_{k}"] = round(res[k] / other[k], 3)
    if getattr(args, "onnx", False):
        res.update(onnx_rows(args, rounds))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"threads={res['threads']} machine={res['machine']} utts={res['utts']} "
            f"audio={res['audio_seconds']}s mode={args.mode} chunk={args.chunk_size}"
        )
        s = f"stream{stream}"

        def line(name: str, p: str) -> str:
            txt = f"{name}: RTF b1 {res[p + 'rtf_b1']:.4f}  b16 {res[p + 'rtf_b16']:.4f}"
            if stream:
                txt += f"  {s} b1 {res[f'{p}rtf_b1_{s}']:.4f}  b16 {res[f'{p}rtf_b16_{s}']:.4f}"
            if stream:
                txt += _latency_line(res, f"{p}lat_{s}_")
            return txt + (
                f"  peak RSS {res[p + 'peak_rss_mb']:.0f} MB"
                f" (model +{res[p + 'rss_delta_mb']:.0f} MB)"
            )

        print(line(args.model, ""))
        if args.vs:
            print(line(args.vs, "vs_"))
            ratios = "  ".join(
                f"{k.removeprefix('ratio_')} {v:.3f}"
                for k, v in res.items()
                if k.startswith("ratio_") and isinstance(v, (int, float))
            )
            print(f"ratio: {ratios}")
            spread = "  ".join(
                f"{k.removeprefix('ratio_').removesuffix('_per_round')} "
                + "/".join(f"{v:.3f}" for v in vals)
                for k, vals in res.items()
                if k.endswith("_per_round")
            )
            if spread:  # --rounds > 1: how far the ratio moved between rounds
                print(f"ratio per round: {spread}")
        print(side_by_side(res, args.model, args.vs))
    return 0


def onnx_rows(args: argparse.Namespace, rounds: int) -> dict:
    """Both models in onnxruntime, batch 1 (ume/bench/onnx_rtf.py): full context, and the
    streaming graph when both models are causal -> onnx_* keys (ratios model / vs)."""
    import tempfile

    from ume.bench.onnx_rtf import bench_graphs, export_graphs, load_feats

    dirs = {"model": args.model, **({"vs": args.vs} if args.vs else {})}
    stream = getattr(args, "stream_chunk", 0)
    for d in dirs.values():
        _, _, m = load_experiment(d)
        if not m.encoder.cfg.causal_conv:
            stream = 0  # no streaming graph for a non-causal model (docs/deploy.md)
    work = Path(tempfile.mkdtemp(prefix="ume_bench_rtf_onnx_"))
    op = getattr(args, "onnx_moe_op", "portable")
    specs = [export_graphs(d, work, name, op, stream) for name, d in dirs.items()]
    feats = load_feats(args.model, args.data, args.max_utts)
    g = bench_graphs(specs, feats, args.threads, rounds, "vs" if args.vs else "model")["graphs"]
    out: dict = {"onnx_moe_op": op, "onnx_stream_chunk": stream}
    for name, prefix in (("model", "onnx_"), ("vs", "vs_onnx_")):
        for k, v in g.get(name, {}).items():
            if k.startswith("ratio_"):
                out["ratio_onnx_" + k.removeprefix("ratio_")] = v
            elif k != "moe_op":  # per-round RTFs: "_rounds" (the "_per_round" keys are ratios)
                out[prefix + k.replace("_per_round", "_rounds")] = v
    return out


def side_by_side(res: dict, model: str, vs: str | None) -> str:
    """One table of everything measured: eager and onnxruntime RTF, full context and
    streaming, streaming latency p50/p95 (ms), and model / vs with its per-round range."""
    s = res.get("stream_chunk", 0)
    rows = [("eager RTF batch 1", "rtf_b1"), ("eager RTF batch 16", "rtf_b16")]
    if s:
        rows += [(f"eager RTF batch 1, stream{s}", f"rtf_b1_stream{s}"),
                 (f"eager RTF batch 16, stream{s}", f"rtf_b16_stream{s}")]  # fmt: skip
        rows += [(f"eager stream{s} {n} ms {q}", f"lat_stream{s}_{n}_ms_{q}")
                 for n in ("chunk", "delay") for q in ("p50", "p95")]  # fmt: skip
    if "onnx_rtf_full" in res:
        rows.append(("onnxruntime RTF batch 1", "onnx_rtf_full"))
    if "onnx_rtf_stream" in res:
        rows.append(
            (f"onnxruntime RTF batch 1, stream{res['onnx_stream_chunk']}", "onnx_rtf_stream")
        )
        rows += [(f"onnxruntime chunk ms {q}", f"onnx_chunk_ms_{q}") for q in ("p50", "p95")]
    head = f"{'':<34} {'model':>10} {'vs':>10} {'model / vs (rounds)':>22}"
    lines = [f"model = {model}" + (f", vs = {vs}" if vs else ""), head]
    for label, key in rows:
        if key not in res:
            continue
        mine, theirs = res[key], res.get("vs_" + key)
        ratio = "" if theirs in (None, 0) else f"{mine / theirs:.3f}"
        rng = _round_range(res, key)
        lines.append(f"{label:<34} {mine:>10.4f} {_num(theirs):>10} {ratio + rng:>22}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _round_range(res: dict, key: str) -> str:
    """' (lo-hi)' of the per-round ratios of this key, where the run recorded them."""
    if key.startswith("rtf_"):
        vals = res.get(f"ratio_{key.removeprefix('rtf_')}_per_round")
        return f" ({min(vals):.2f}-{max(vals):.2f})" if vals else ""
    if key.startswith("onnx_rtf_"):
        rng = res.get(f"ratio_onnx_{key.removeprefix('onnx_rtf_')}_range")
        return f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else ""
    return ""


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
