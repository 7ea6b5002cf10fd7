"""`ume bench gap`: where the MoE model's extra encoder time goes, compared with its dense model.

In one run, alternating round by round, it times the encoder (features precomputed, no search)
of three models on the same utterances at a given batch size:
    dense   the --vs experiment
    moe     the --model experiment (e.g. UME)
    shared  the --model experiment with every expert of a layer aliased to expert 0's weights:
            the same routing, dispatch and FLOPs as `moe`, but one expert's weights to read per
            layer instead of E (so moe - shared is the cost of fetching E experts' weights)
and counts the encoders' FLOPs with torch.utils.flop_counter (exact routed FLOPs: the sorted
dispatch, no padding). The extra time of `moe` over `dense`, in units of dense time, splits as
    flops     flop_ratio - 1            the top-k experts' multiply-adds
    weights   (moe - shared) / dense    reading E experts' weights instead of one
    overhead  (shared / dense) - flop_ratio   routing, sort, gather/scatter, small GEMMs
With --profile it also prints the top operators of one `moe` pass (torch.profiler, self time).

Example:
    ume bench gap --model runs/ume --vs runs/dense --data data/test --batch 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ume.config import load_config
from ume.expdir import load_experiment
from ume.machine import machine_info
from ume.model.asr import ASRModel
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions, dispatch_options, set_dispatch_options


def share_expert_weights(model: ASRModel) -> int:
    """Alias every expert of each MoE layer to expert 0 (in place; for timing only: the model
    no longer computes what it was trained to). Returns the number of MoE layers changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, MoEFeedForward):
            ex = m.experts
            for name in ("w_1", "b_1", "w_2", "b_2"):
                p = getattr(ex, name)
                one = p.detach()[:1].clone()  # (1, ...): the only storage left
                setattr(ex, name, torch.nn.Parameter(one.expand_as(p), requires_grad=False))
            n += 1
    return n


def load_features(data: str, exp_dir: str, max_utts: int) -> list[torch.Tensor]:
    """Fbank (T, F) of up to max_utts utterances of `data` (exp_dir's feature config),
    longest first."""
    from ume.bench.rtf import load_waves
    from ume.data.features import compute_fbank

    fcfg = load_config(Path(exp_dir) / "config.yaml").features
    feats = [torch.from_numpy(compute_fbank(w, fcfg)) for w in load_waves(data, max_utts)]
    return sorted(feats, key=lambda f: -f.shape[0])


def batch_features(
    feats: list[torch.Tensor], batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded (B, T, F) batches of `feats`, in order, with their lengths (B,)."""
    out = []
    for s in range(0, len(feats), batch):
        fs = feats[s : s + batch]
        lens = torch.tensor([f.shape[0] for f in fs])
        out.append((torch.nn.utils.rnn.pad_sequence(fs, batch_first=True), lens))
    return out


@torch.inference_mode()
def encoder_seconds(model: ASRModel, batches: list) -> float:
    """Wall seconds of model.encode over all batches (after one warm-up batch)."""
    model.encode(*batches[0])
    t = time.perf_counter()
    for x, lens in batches:
        model.encode(x, lens)
    return time.perf_counter() - t


@torch.inference_mode()
def encoder_flops(model: ASRModel, batches: list) -> int:
    """FLOPs of model.encode over all batches, MoE layers on their exact (unpadded) dispatch."""
    # the sorted loop: its addmm calls are what FlopCounterMode counts (the bias-filled
    # path's in-place addmm_ does the same multiply-adds but is not counted)
    opts = {"padded_max_rows": 0, "small_max_bytes": 0}
    with dispatch_options(model, **opts), FlopCounterMode(display=False) as fc:
        for x, lens in batches:
            model.encode(x, lens)
    return fc.get_total_flops()


def profile_top(model: ASRModel, batches: list, rows: int) -> str:
    """torch.profiler table of one pass over `batches`, top `rows` operators by self time."""
    from torch.profiler import profile

    with torch.inference_mode(), profile() as prof:
        for x, lens in batches:
            model.encode(x, lens)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def load_models(model_dir: str, vs_dir: str) -> dict[str, ASRModel]:
    """{"dense": --vs, "moe": --model, "shared": a copy of --model with shared expert weights}."""
    moe = load_experiment(model_dir)[2]
    shared = copy.deepcopy(moe)
    if share_expert_weights(shared) == 0:
        raise ValueError(f"{model_dir} has no MoE layers: nothing to split")
    return {"dense": load_experiment(vs_dir)[2], "moe": moe, "shared": shared}


def measure_gap(models: dict[str, ASRModel], batches: list, batch: int, rounds: int) -> dict:
    """Time dense / moe / shared alternately for `rounds` rounds; medians and the split."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            times[name].append(encoder_seconds(m, batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    flop_ratio = encoder_flops(models["moe"], batches) / encoder_flops(models["dense"], batches)
    d = med["dense"]
    ratio, shared = med["moe"] / d, med["shared"] / d
    return {
        "batch": batch,
        "utts": sum(int(lens.numel()) for _, lens in batches),
        "rounds": rounds,
        "dense_ms": round(d * 1000, 2),
        "moe_ms": round(med["moe"] * 1000, 2),
        "shared_ms": round(med["shared"] * 1000, 2),
        "ratio": round(ratio, 3),
        "ratio_per_round": [round(a / b, 3) for a, b in zip(times["moe"], times["dense"])],
        "flop_ratio": round(flop_ratio, 3),
        "extra_flops": round(flop_ratio - 1, 3),
        "extra_weights": round(ratio - shared, 3),
        "extra_overhead": round(shared - flop_ratio, 3),
    }


def add_gap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="MoE experiment dir (e.g. UME)")
    p.add_argument("--vs", required=True, help="its dense experiment dir")
    p.add_argument("--data", required=True, help="Kaldi dir or data.list of test utterances")
    p.add_argument("--batch", type=int, action="append", help="batch size (repeatable; 1, 16)")
    p.add_argument("--max-utts", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--padded-max-rows",
        type=int,
        help="the MoE layers' DispatchOptions.padded_max_rows (0: never the padded bmm)",
    )
    p.add_argument("--profile", action="store_true", help="also print top ops of one MoE pass")
    p.add_argument("--json", action="store_true")


def main_gap(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    return _report(args)


def _report(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: need at least 1 round")
    sizes = args.batch or [1, 16]
    models = load_models(args.model, args.vs)
    padded = DispatchOptions().padded_max_rows
    if args.padded_max_rows is not None:
        padded = args.padded_max_rows
        for m in models.values():
            set_dispatch_options(m, padded_max_rows=padded)
    feats = load_features(args.data, args.vs, args.max_utts)
    rows = [measure_gap(models, batch_features(feats, b), b, args.rounds) for b in sizes]
    info = {
        **machine_info(),
        "threads": torch.get_num_threads(),
        "padded_max_rows": padded,
    }
    if args.json:
        print(json.dumps({**info, "rows": rows}, indent=2))
    else:
        print(
            f"machine={info['machine']} threads={info['threads']} torch={info['torch']} "
            f"padded_max_rows={info['padded_max_rows']}"
        )
        print("batch | dense ms | moe ms | shared-weights ms | moe/dense | = 1 + flops + weights")
        print("      |          |        |                   |           |   + overhead")
        for r in rows:
            print(
                f"{r['batch']:>5} | {r['dense_ms']:8.1f} | {r['moe_ms']:6.1f} | "
                f"{r['shared_ms']:17.1f} | {r['ratio']:9.2f} | 1 + {r['extra_flops']:.2f} + "
                f"{r['extra_weights']:.2f} + {r['extra_overhead']:.2f}"
                f"   (per round {r['ratio_per_round']})"
            )
    if args.profile:
        table = profile_top(models["moe"], batch_features(feats, sizes[0]), 15)
        print(table, file=sys.stderr if args.json else sys.stdout)
    return 0
