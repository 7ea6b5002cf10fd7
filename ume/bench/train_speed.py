"""Training throughput (`ume bench train`): a few optimiser steps on fixed synthetic batches
(random fbank of realistic length, random targets) for a paper-shaped dense model, the UME model
in its frozen phase (trainable="moe") and unfrozen (trainable="all"), and the unfrozen model
with the reference (autograd) expert backward; rounds alternate the models, and each reports
its median round's steps/s and audio s/s.

Examples:
    ume bench train --json
    ume bench train --preset tiny --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time

import torch
from torch import nn

from ume.config import MoEConfig
from ume.machine import machine_info
from ume.model.moe_dispatch import dispatch_options


def paper_models(vocab: int, preset: str, experts: int, top_k: int):
    from ume.config import load_config, preset_config
    from ume.model.asr import ASRModel
    from ume.upcycle import upcycle_state_dict

    cfg = load_config(preset_config(preset))
    torch.manual_seed(0)
    dense = ASRModel(cfg.model, vocab)
    mcfg = copy.deepcopy(cfg.model)
    mcfg.moe = MoEConfig(num_experts=experts, top_k=top_k, router_init="normal")
    ume = ASRModel(mcfg, vocab)
    sd, _ = upcycle_state_dict(dense.state_dict(), ume)
    ume.load_state_dict(sd, strict=True)
    return cfg, dense, ume


def synthetic_batches(
    n: int, batch: int, min_frames: int, max_frames: int, vocab: int, dim: int = 80, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed random (feats, feat_lens, ys, ys_lens) batches: fbank-like scale, lengths uniform
    in [min_frames, max_frames], about one token per 4 encoder frames (x8 subsampling)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lens = torch.randint(min_frames, max_frames + 1, (batch,), generator=g)
        feats = torch.randn(batch, int(lens.max()), dim, generator=g) * 3 + 10
        feats *= (torch.arange(feats.size(1)).view(1, -1, 1) < lens.view(-1, 1, 1)).float()
        ys_lens = (lens // 32).clamp(min=1)
        ys = torch.randint(1, vocab - 1, (batch, int(ys_lens.max())), generator=g)
        ys[torch.arange(ys.size(1)).view(1, -1) >= ys_lens.view(-1, 1)] = -1
        out.append((feats, lens, ys, ys_lens))
    return out


def train_throughput(
    model: nn.Module,
    batches: list,
    trainable: str = "all",
    steps: int = 6,
    warmup: int = 2,
    num_blocks: int | None = None,
    lr: float = 1e-4,
) -> dict:
    """Optimiser steps as the trainer does them (forward, backward, clip, AdamW step) over the
    fixed batches, cycling; returns steps/s and audio seconds (10 ms frames) per second."""
    from ume.train.schedule import apply_trainable

    model = copy.deepcopy(model)
    nb = num_blocks if num_blocks is not None else len(model.encoder.blocks)
    n_train, n_total = apply_trainable(model, trainable, nb)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    random.seed(0)  # dynamic-chunk sampling: the same sequence for every model

    def step(i: int) -> float:
        feats, lens, ys, ys_lens = batches[i % len(batches)]
        out = model(feats, lens, ys, ys_lens)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(lens.sum()) / 100.0

    for i in range(warmup):
        step(i)
    random.seed(1)
    audio = 0.0
    t0 = time.perf_counter()
    for i in range(steps):
        audio += step(warmup + i)
    sec = time.perf_counter() - t0
    return {
        "trainable": trainable,
        "params_trainable": n_train,
        "params_total": n_total,
        "steps": steps,
        "seconds": round(sec, 3),
        "steps_per_s": round(steps / sec, 4),
        "audio_s_per_s": round(audio / sec, 2),
    }


def bench_train(
    preset: str = "paper",
    vocab: int = 1500,
    batch: int = 16,
    min_frames: int = 250,
    max_frames: int = 370,
    steps: int = 6,
    warmup: int = 2,
    experts: int = 8,
    top_k: int = 2,
    rounds: int = 3,
) -> dict:
    """Dense vs UME frozen (trainable="moe") vs UME unfrozen ("all") on the same batches, and
    ume_unfrozen_ref: the unfrozen step with the experts' gradients from autograd ops instead
    of expert_ffn's backward. `rounds` alternating rounds; each model reports its median."""
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: need at least 1 round")
    cfg, dense, ume = paper_models(vocab, preset, experts, top_k)
    batches = synthetic_batches(
        max(2, min(steps + warmup, 4)),
        batch,
        min_frames,
        max_frames,
        vocab,
        cfg.model.encoder.input_dim,
    )
    nb = cfg.model.encoder.num_blocks
    plan = {  # name: (model, trainable, expert_ffn's fused backward)
        "dense": (dense, "all", True),
        "ume_frozen": (ume, "moe", True),
        "ume_unfrozen": (ume, "all", True),
        "ume_unfrozen_ref": (ume, "all", False),
    }
    per_round: dict[str, list[dict]] = {name: [] for name in plan}
    for _ in range(rounds):  # alternate the models, so a slow spell hits them alike
        for name, (model, trainable, fused) in plan.items():
            with dispatch_options(model, fused_backward=fused):
                per_round[name].append(
                    train_throughput(model, batches, trainable, steps, warmup, nb)
                )
    runs = {}
    for name, rows in per_round.items():  # the round with the median speed
        runs[name] = sorted(rows, key=lambda r: r["steps_per_s"])[len(rows) // 2]
    frames = sum(int(b[1].sum()) for b in batches) / len(batches)
    return {
        **machine_info(),
        "preset": preset,
        "vocab": vocab,
        "experts": experts,
        "top_k": top_k,
        "batch": batch,
        "frames_per_batch": frames,
        "runs": runs,
        "frozen_vs_unfrozen_speedup": round(
            runs["ume_frozen"]["steps_per_s"] / runs["ume_unfrozen"]["steps_per_s"], 3
        ),
        "unfrozen_vs_dense_cost": round(
            runs["dense"]["steps_per_s"] / runs["ume_unfrozen"]["steps_per_s"], 3
        ),
        "fused_vs_ref_speedup": round(
            runs["ume_unfrozen"]["steps_per_s"] / runs["ume_unfrozen_ref"]["steps_per_s"], 3
        ),
        "rounds": rounds,
        "steps_per_s_per_round": {
            name: [r["steps_per_s"] for r in rows] for name, rows in per_round.items()
        },
    }


def main_train_bench(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = bench_train(
        preset=args.preset,
        vocab=args.vocab,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
    )
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(
        f"machine={res['machine']} threads={res['threads']} preset={res['preset']} "
        f"vocab={res['vocab']} batch={res['batch']} frames/batch={res['frames_per_batch']:.0f}"
    )
    for name, r in res["runs"].items():
        print(
            f"{name:>16}: {r['steps_per_s']:.3f} steps/s  {r['audio_s_per_s']:.1f} audio s/s  "
            f"({r['params_trainable'] / 1e6:.2f}M of {r['params_total'] / 1e6:.2f}M trainable)"
        )
    print(
        f"frozen/unfrozen speed-up x{res['frozen_vs_unfrozen_speedup']:.2f}; "
        f"unfrozen UME step costs x{res['unfrozen_vs_dense_cost']:.2f} a dense step; "
        f"expert_ffn backward x{res['fused_vs_ref_speedup']:.2f} the autograd reference"
    )
    for name, sps in res["steps_per_s_per_round"].items():
        print(f"{name:>16} steps/s per round: {sps}")
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", help="model shape preset")
    p.add_argument("--vocab", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16, help="utterances per batch (2.5-3.7 s)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", action="store_true")
