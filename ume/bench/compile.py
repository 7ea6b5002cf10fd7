"""`ume bench compile`: does torch.compile speed up the encoder on CPU? Eager vs compiled, in one
run, per experiment dir (dense and MoE), at batch 1 on a synthetic utterance of fixed length.

Example:
    ume bench compile --model runs/dense --model runs/ume --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from ume.expdir import load_experiment
from ume.machine import machine_info


def time_call(fn: Callable, x: torch.Tensor, lens: torch.Tensor, reps: int) -> float:
    """Median milliseconds of fn(x, lens) under inference_mode, after 3 warm-up calls."""
    times = []
    with torch.inference_mode():
        for _ in range(3):
            fn(x, lens)
        for _ in range(reps):
            t = time.perf_counter()
            fn(x, lens)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def compare(exp_dir: str, frames: int, reps: int) -> dict:
    """Eager vs torch.compile(dynamic=True) of ASRModel.encode on one (1, frames, F) input."""
    cfg, _, model = load_experiment(exp_dir)
    model.eval()
    x = torch.randn(1, frames, cfg.model.encoder.input_dim)
    lens = torch.tensor([frames])
    row = {
        "model": exp_dir,
        "frames": frames,
        "eager_ms": round(time_call(model.encode, x, lens, reps), 3),
    }
    t0 = time.perf_counter()
    compiled = torch.compile(model.encode, dynamic=True)
    with torch.inference_mode():
        compiled(x, lens)  # compilation happens here
    row["compile_seconds"] = round(time.perf_counter() - t0, 1)
    row["compiled_ms"] = round(time_call(compiled, x, lens, reps), 3)
    row["compiled_vs_eager"] = round(row["compiled_ms"] / row["eager_ms"], 3)
    return row


def add_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="experiment dir (repeatable)")
    p.add_argument("--frames", type=int, default=300, help="fbank frames (300 = 3 s)")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")


def main_compile(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    rows = [compare(m, args.frames, args.reps) for m in args.model]
    info = {**machine_info(), "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps({**info, "rows": rows}, indent=2))
    else:
        print(f"machine={info['machine']} threads={info['threads']} torch={info['torch']}")
        for r in rows:
            print(
                f"{r['model']}: eager {r['eager_ms']:.2f} ms  compiled {r['compiled_ms']:.2f} ms"
                f"  (x{r['compiled_vs_eager']:.2f}, compile {r['compile_seconds']} s)"
            )
    return 0
