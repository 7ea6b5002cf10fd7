"""Real-time factor: processing seconds / audio seconds, at batch 1 and batch 16.

Timed work per batch: fbank of every utterance + encoder + search. Threads are fixed and
printed; the first batches are a warm-up and not timed. With --vs, a second model is measured
in the same run (same utterances, same threads) and the ratio printed.

Example:
    ume bench rtf --model runs/ume --vs runs/dense --data data/quick/test --json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from ume.data.features import compute_fbank
from ume.data.manifest import load_audio, load_manifest
from ume.decode.search import decode_batch
from ume.expdir import load_experiment
from ume.model.asr import ASRModel


def machine_info() -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
    }


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

    def run(batch: list[int]) -> None:
        feats = [torch.from_numpy(compute_fbank(waves[i], feat_cfg)) for i in batch]
        lens = torch.tensor([f.shape[0] for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        decode_batch(model, x, lens, mode, chunk_size=chunk_size)

    for b in batches[:warmup_batches]:
        run(b)
    audio = sum(len(w) for w in waves) / 16000.0
    t0 = time.perf_counter()
    for b in batches:
        run(b)
    return (time.perf_counter() - t0) / audio


def rtf_for_dir(exp_dir: str, waves: list, mode: str, chunk: int) -> dict:
    cfg, _, model = load_experiment(exp_dir)
    return {
        "rtf_b1": measure_rtf(model, cfg.features, waves, 1, mode, chunk),
        "rtf_b16": measure_rtf(model, cfg.features, waves, 16, mode, chunk),
    }


def load_waves(data: str, max_utts: int) -> list:
    utts, _ = load_manifest(data, require_text=False)
    utts = utts[:max_utts] if max_utts > 0 else utts
    return [load_audio(u.wav) for u in utts]


def main_rtf(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    waves = load_waves(args.data, args.max_utts)
    res: dict = {
        "threads": torch.get_num_threads(),
        "utts": len(waves),
        "audio_seconds": round(sum(len(w) for w in waves) / 16000, 1),
        "mode": args.mode,
        "chunk_size": args.chunk_size,
        **machine_info(),
    }
    res.update(rtf_for_dir(args.model, waves, args.mode, args.chunk_size))
    if args.vs:
        other = rtf_for_dir(args.vs, waves, args.mode, args.chunk_size)
        res["vs_rtf_b1"], res["vs_rtf_b16"] = other["rtf_b1"], other["rtf_b16"]
        res["ratio_b1"] = res["rtf_b1"] / other["rtf_b1"]
        res["ratio_b16"] = res["rtf_b16"] / other["rtf_b16"]
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"threads={res['threads']} machine={res['machine']} utts={res['utts']} "
            f"audio={res['audio_seconds']}s mode={args.mode} chunk={args.chunk_size}"
        )
        print(f"{args.model}: RTF b1 {res['rtf_b1']:.4f}  b16 {res['rtf_b16']:.4f}")
        if args.vs:
            print(f"{args.vs}: RTF b1 {res['vs_rtf_b1']:.4f}  b16 {res['vs_rtf_b16']:.4f}")
            print(f"ratio: b1 {res['ratio_b1']:.3f}  b16 {res['ratio_b16']:.3f}")
    return 0
