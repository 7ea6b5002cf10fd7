"""Training-step cost of model/precision variants, measured in one run (speed ablation).

Times forward + backward + AdamW on the same synthetic batch (realistic shape: B utterances of
T fbank frames, L tokens each) for each variant, after warm-up, and prints seconds per step and
the ratio to the first variant. Convergence per step is a separate question (see
docs/RESULTS.md); this only answers "how many steps per minute does a choice cost".

Example:
    ume bench step --config configs/paper.yaml --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from ume.config import load_config
from ume.model.asr import ASRModel
from ume.model.params import count_params

VARIANTS: dict[str, list[tuple[str, object]]] = {
    "preset": [],
    "fp32": [("precision", "fp32")],
    "bf16 autocast": [("precision", "bf16")],
    "subsampling x4": [("encoder.subsampling", 4)],
    "subsampling x6": [("encoder.subsampling", 6)],
    "stem channels 16": [("encoder.subsampling_channels", 16)],
    "stem channels 32": [("encoder.subsampling_channels", 32)],
    "stem channels 64": [("encoder.subsampling_channels", 64)],
    "stem channels = d_model": [("encoder.subsampling_channels", 0)],
}


def _set(cfg, path: str, value) -> None:
    obj = cfg
    *parents, last = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def time_step(
    model_cfg, vocab: int, batch: int, frames: int, tokens: int, precision: str, reps: int
) -> float:
    torch.manual_seed(0)
    model = ASRModel(model_cfg, vocab)
    model.cfg.dynamic_chunk = False
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    feats = torch.randn(batch, frames, 80)
    lens = torch.full((batch,), frames)
    ys = torch.randint(1, vocab - 1, (batch, tokens))
    ys_lens = torch.full((batch,), tokens)
    times = []
    for i in range(reps + 2):
        t = time.perf_counter()
        # the device of the tensors (a CPU benchmark today), not a hard-coded "cpu"
        with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(feats, lens, ys, ys_lens)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:  # warm-up excluded
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main_step(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    rows = []
    for name, changes in VARIANTS.items():
        mcfg = copy.deepcopy(base.model)
        precision = base.train.precision
        for path, value in changes:
            if path == "precision":
                precision = value
            else:
                _set(mcfg, path, value)
        sec = time_step(
            mcfg, args.vocab, args.batch, args.frames, args.tokens, precision, args.reps
        )
        rows.append(
            {
                "variant": name,
                "sec_per_step": round(sec, 4),
                "params": count_params(ASRModel(mcfg, args.vocab)),
            }
        )
    ref = rows[0]["sec_per_step"]
    for r in rows:
        r["ratio_vs_preset"] = round(r["sec_per_step"] / ref, 3)
    meta = {
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "frames": args.frames,
        "tokens": args.tokens,
        "config": args.config,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in meta.items()))
        for r in rows:
            print(
                f"{r['variant']:<26} {r['sec_per_step']:.3f} s/step  x{r['ratio_vs_preset']:.2f}"
                f"  {r['params'] / 1e6:.2f}M params"
            )
    return 0


def add_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/paper.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=18, help="utterances per batch")
    p.add_argument("--frames", type=int, default=330, help="fbank frames per utterance")
    p.add_argument("--tokens", type=int, default=12)
    p.add_argument("--vocab", type=int, default=1445)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
