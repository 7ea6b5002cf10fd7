"""onnxruntime RTF of exported graphs, MoE model vs dense model, in one run (`ume bench onnx`).

Exports both experiment dirs (`ume export`'s graphs: full context and streaming) into a work
dir, the MoE model once per `--moe-ops` variant (fused com.microsoft.MoE, portable standard
ops) and, with `--int8`, dynamically quantised copies (ume/decode/quantize.py). Then, in one
process and one onnxruntime thread pool per session (intra-op threads = --threads):

    full context  batch 1: one session.run per utterance (encoder + CTC head)
    streaming     batch 1: the chunk loop of examples/onnx_transcribe.py, caches fed back;
                  every chunk's session.run is timed (per-chunk latency p50/p95)

RTF = session seconds / audio seconds (fbank is computed once, before timing, and is the
same for every graph). With `--mer DIR[,DIR...]` every graph's full-context CTC greedy output
on those Kaldi dirs (e.g. test and test_heldout) is scored (MER, CER zh, WER en): the
accuracy cost of int8, measured on the same utterances for every graph. Rounds alternate over all graphs (graph order rotated each round), so
machine-speed drift hits every graph alike; each graph's RTF is its median over rounds, and
every ratio (graph / dense) is reported as the ratio of medians plus its per-round range.

Example:
    ume bench onnx --model runs/ume --vs runs/dense --data data/test --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ume.data.features import compute_fbank
from ume.data.manifest import load_audio, load_manifest
from ume.decode.deploy import export_streaming
from ume.decode.export import export_encoder, moe_export_mode, ort_session, resolve_moe_op
from ume.expdir import load_experiment
from ume.machine import machine_info
from ume.model.moe import MoEFeedForward
from ume.model.streaming import ChunkEncoder


def export_graphs(exp_dir: str, work: Path, name: str, moe_op: str, stream_chunk: int) -> dict:
    """Full-context (and streaming) graphs of one experiment dir -> a graph spec dict."""
    _, _, model = load_experiment(exp_dir)
    moe_op = resolve_moe_op(model, moe_op)
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    full = export_encoder(model, d / "encoder.onnx", moe_op=moe_op)
    spec = {"name": name, "model": str(exp_dir), "moe_op": moe_op, "full": str(full)}
    spec["moe_layers"] = sum(isinstance(m, MoEFeedForward) for m in model.modules())
    if stream_chunk > 0:
        with moe_export_mode(model, moe_op):
            sp = export_streaming(model, d / "encoder_stream.onnx", stream_chunk)
        enc = ChunkEncoder(model, stream_chunk)
        spec.update(
            stream=str(sp),
            window=enc.window,
            stride=enc.stride,
            min_input=enc.min_input,
            att_cache=[enc.num_blocks, enc.heads, 0, 2 * enc.d_k],
            cnn_cache=[enc.num_blocks, enc.d_model, enc.conv_ctx],
        )
    return spec


def load_feats(exp_dir: str, data: str, max_utts: int) -> list[np.ndarray]:
    """fbank (T, F) float32 of the first max_utts utterances, rounded through float16 as ume
    decodes them."""
    cfg, _, _ = load_experiment(exp_dir)
    utts, _ = load_manifest(data, require_text=False)
    utts = utts[:max_utts] if max_utts > 0 else utts
    feats = [compute_fbank(load_audio(u.wav), cfg.features) for u in utts]
    return [f.astype(np.float16).astype(np.float32) for f in feats if f.shape[0] > 0]


def run_full(sess, feats: list[np.ndarray]) -> float:  # noqa: ANN001 - an ort session
    """Seconds of one session.run per utterance, summed."""
    total = 0.0
    for f in feats:
        feed = {"feats": f[None], "feats_len": np.array([f.shape[0]], np.int64)}
        t0 = time.perf_counter()
        sess.run(None, feed)
        total += time.perf_counter() - t0
    return total


def run_stream(sess, spec: dict, feats: list[np.ndarray]) -> list[float]:  # noqa: ANN001
    """Seconds of every chunk's session.run, utterance after utterance."""
    names = {i.name for i in sess.get_inputs()}  # offset is pruned when unused
    times = []
    for f in feats:
        att = np.zeros(spec["att_cache"], np.float32)
        cnn = np.zeros(spec["cnn_cache"], np.float32)
        done = start = 0
        while f.shape[0] - start >= spec["min_input"]:
            feed = {
                "feats": f[start : start + spec["window"]][None],
                "att_cache": att,
                "cnn_cache": cnn,
                "offset": np.array([done], np.int64),
            }
            feed = {k: v for k, v in feed.items() if k in names}
            t0 = time.perf_counter()
            _, lp, att, cnn = sess.run(None, feed)
            times.append(time.perf_counter() - t0)
            done += lp.shape[1]
            start += spec["stride"]
    return times


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_graphs(
    specs: list[dict], feats: list[np.ndarray], threads: int, rounds: int, ref: str
) -> dict:
    """Alternating rounds over every graph; RTF medians, ratios vs graph `ref`, latency."""
    audio = sum(f.shape[0] for f in feats) / 100.0  # 10 ms fbank frames
    sessions = {}
    for s in specs:
        sessions[(s["name"], "full")] = ort_session(s["full"], threads)
        if "stream" in s:
            sessions[(s["name"], "stream")] = ort_session(s["stream"], threads)
    by_name = {s["name"]: s for s in specs}
    keys = list(sessions)
    per_round: dict[tuple, list[float]] = {k: [] for k in keys}
    chunk_ms: dict[tuple, list[float]] = {k: [] for k in keys if k[1] == "stream"}
    for k in keys:  # warm-up: one utterance each (allocations, first-run kernels)
        if k[1] == "full":
            run_full(sessions[k], feats[:1])
        else:
            run_stream(sessions[k], by_name[k[0]], feats[:1])
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            if k[1] == "full":
                per_round[k].append(run_full(sessions[k], feats) / audio)
            else:
                t = run_stream(sessions[k], by_name[k[0]], feats)
                per_round[k].append(sum(t) / audio)
                chunk_ms[k] += [x * 1e3 for x in t]
    res: dict = {"graphs": {}}
    for (name, mode), vals in per_round.items():
        g = res["graphs"].setdefault(name, {"moe_op": by_name[name]["moe_op"]})
        g[f"rtf_{mode}"] = statistics.median(vals)
        g[f"rtf_{mode}_per_round"] = [round(v, 5) for v in vals]
        if mode == "stream":
            ms = chunk_ms[(name, mode)]
            g["chunk_ms_p50"], g["chunk_ms_p95"] = round(_pct(ms, 50), 3), round(_pct(ms, 95), 3)
    for name, g in res["graphs"].items():
        if name == ref:
            continue
        for mode in ("full", "stream"):
            if (name, mode) not in per_round or (ref, mode) not in per_round:
                continue
            mine, base = per_round[(name, mode)], per_round[(ref, mode)]
            rr = [a / b for a, b in zip(mine, base)]
            g[f"ratio_{mode}"] = round(g[f"rtf_{mode}"] / res["graphs"][ref][f"rtf_{mode}"], 3)
            g[f"ratio_{mode}_range"] = [round(min(rr), 3), round(max(rr), 3)]
        if "chunk_ms_p95" in g:
            b = res["graphs"][ref]
            g["ratio_chunk_p95"] = round(g["chunk_ms_p95"] / b["chunk_ms_p95"], 3)
    res.update(utts=len(feats), audio_seconds=round(audio, 1), rounds=rounds, ref=ref)
    return res


def greedy_ids(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """(T, V) -> CTC best path: argmax per frame, repeats merged, blanks removed."""
    ids, prev = [], blank
    for s in log_probs.argmax(-1).tolist():
        if s != prev and s != blank:
            ids.append(s)
        prev = s
    return ids


def mer_of_graphs(specs: list[dict], exp_dir: str, data: str, threads: int) -> dict:
    """{graph name: score} of full-context CTC greedy decoding of every utterance of `data`."""
    from ume.decode.score import score

    cfg, tok, _ = load_experiment(exp_dir)
    utts, _ = load_manifest(data)
    feats = {}
    for u in utts:
        f = compute_fbank(load_audio(u.wav), cfg.features)
        feats[u.key] = f.astype(np.float16).astype(np.float32)
    refs = {u.key: u.text for u in utts}
    drop = {tok.vocab_size - 1}  # sos/eos
    out = {}
    for s in specs:
        sess = ort_session(s["full"], threads)
        hyps = {}
        for key, f in feats.items():
            if f.shape[0] < 8:
                hyps[key] = ""
                continue
            feed = {"feats": f[None], "feats_len": np.array([f.shape[0]], np.int64)}
            lp = sess.run(None, feed)[1][0]
            hyps[key] = tok.decode([i for i in greedy_ids(lp) if i not in drop])
        sc = score(refs, hyps)
        out[s["name"]] = {k: round(sc[k], 2) for k in ("mer", "cer_zh", "wer_en")}
        out[s["name"]]["num_utts"] = sc["num_utts"]
    return out


def main_onnx(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: need at least 1")
    ops = [o.strip() for o in args.moe_ops.split(",") if o.strip()]
    for o in ops:
        if o not in ("fused", "portable"):
            raise ValueError(f"--moe-ops {args.moe_ops!r}: a comma list of fused, portable")
    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ume_bench_onnx_"))
    specs = [export_graphs(args.vs, work, "dense", "portable", args.stream_chunk)]
    for o in ops:
        specs.append(export_graphs(args.model, work, f"moe_{o}", o, args.stream_chunk))
    if args.int8:
        from ume.decode.quantize import quantize_graphs

        for s in list(specs):
            specs.append(quantize_graphs(s, work / f"{s['name']}_int8"))
    res: dict = {}
    if args.mer:
        res["mer"] = {
            d: mer_of_graphs(specs, args.vs, d, args.threads) for d in args.mer.split(",")
        }
    feats = load_feats(args.vs, args.data, args.max_utts)
    res.update(bench_graphs(specs, feats, args.threads, args.rounds, "dense"))
    res.update(
        model=args.model, vs=args.vs, data=args.data, stream_chunk=args.stream_chunk,
        onnxruntime=_ort_version(), work=str(work), **machine_info(),
    )  # fmt: skip
    res["threads"] = args.threads
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(
        f"onnxruntime {res['onnxruntime']}, {res['machine']}, {args.threads} thread(s), "
        f"{res['utts']} utts, {res['audio_seconds']} s audio, {args.rounds} rounds, batch 1"
    )
    for name, g in res["graphs"].items():
        line = f"{name:<16} full RTF {g['rtf_full']:.5f}"
        if "ratio_full" in g:
            lo, hi = g["ratio_full_range"]
            line += f" (x{g['ratio_full']:.2f}, rounds {lo:.2f}-{hi:.2f})"
        if "rtf_stream" in g:
            line += f"  stream RTF {g['rtf_stream']:.5f}"
            if "ratio_stream" in g:
                lo, hi = g["ratio_stream_range"]
                line += f" (x{g['ratio_stream']:.2f}, rounds {lo:.2f}-{hi:.2f})"
            line += f"  chunk ms p50/p95 {g['chunk_ms_p50']:.2f}/{g['chunk_ms_p95']:.2f}"
        print(line)
    for d, by_graph in res.get("mer", {}).items():
        for name, sc in by_graph.items():
            print(f"MER {d} {name}: {sc['mer']:.2f} (CER zh {sc['cer_zh']:.2f}, WER en "
                  f"{sc['wer_en']:.2f}, {sc['num_utts']} utts)")  # fmt: skip
    return 0


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def add_onnx_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="MoE (UME) experiment dir")
    p.add_argument("--vs", required=True, help="dense experiment dir (the ratios' base)")
    p.add_argument("--data", required=True, help="Kaldi dir or data.list")
    p.add_argument("--max-utts", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--stream-chunk", type=int, default=16, help="0: full context only")
    p.add_argument(
        "--moe-ops", default="fused,portable", help="MoE graph variants: fused, portable"
    )
    p.add_argument("--int8", action="store_true", help="also int8 copies of every graph")
    p.add_argument("--work", help="dir for the exported graphs (default: a temp dir)")
    p.add_argument(
        "--mer", help="comma list of Kaldi dirs: score every graph's CTC greedy text on them"
    )
    p.add_argument("--json", action="store_true")
