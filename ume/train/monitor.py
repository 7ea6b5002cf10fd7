"""What the trainer reports about the model while it trains: the dev learning curve (a CTC
greedy MER point per evaluation, appended to EXPDIR/curve.jsonl, with how similar each MoE
layer's experts still are) and the TensorBoard scalars (train/<stat>, train/lr,
train/grad_norm, moe/<layer>/<stat>, dev/mer_ctc_greedy, moe_sim/<layer>).

Example:
    >>> log_train_scalars(writer, {"loss": 2.1}, lr=1e-3, grad_norm=0.8, moe_stats={}, step=50)
    >>> res = dev_score(model, dev_store, tokenizer, max_utts=200)
    >>> point = record_dev_point(model, writer, exp / "curve.jsonl", step, seconds, res["mer"])
    >>> point
    {'step': 400, 'minutes': 12.5, 'dev_mer': 31.2, 'expert_sim': 0.97, 'expert_sim_max': 0.99}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ume.data.loader import FeatureStore
from ume.data.tokenizer import Tokenizer
from ume.decode.runner import decode_store, references
from ume.decode.score import score
from ume.model.moe import MoEFeedForward


def dev_score(
    model: nn.Module,
    store: FeatureStore,
    tokenizer: Tokenizer,
    max_utts: int = 0,
    mode: str = "ctc_greedy",
) -> dict:
    """Score of decoding `store` (a fixed random subset of `max_utts` utterances when > 0)."""
    n = len(store)
    idx = list(range(n))
    if max_utts and n > max_utts:
        idx = random.Random(0).sample(idx, max_utts)
    hyps = decode_store(model, store, tokenizer, mode, indices=idx)
    return score(references(store, idx), hyps)


def expert_similarity(model: nn.Module) -> dict[str, float]:
    """Per MoE layer name, its experts' similarity summary: how far upcycled experts have
    moved apart from their common copy; {} for a dense model."""
    return {
        n: m.similarity_summary()[0]
        for n, m in model.named_modules()
        if isinstance(m, MoEFeedForward)
    }


def record_dev_point(
    model: nn.Module,
    writer: Any,
    curve_file: Path,
    step: int,
    train_seconds: float,
    dev_mer: float,
    cpu_seconds: float | None = None,
) -> dict:
    """One learning-curve point: returned, appended to `curve_file` (JSON lines) and written
    to TensorBoard `writer` with the per-layer expert similarities. `minutes` is wall-clock
    training time, `cpu_minutes` (when given) the process's CPU time in the same steps."""
    point = {"step": step, "minutes": round(train_seconds / 60, 3), "dev_mer": dev_mer}
    if cpu_seconds is not None:
        point["cpu_minutes"] = round(cpu_seconds / 60, 3)
    sims = expert_similarity(model)
    if sims:
        point["expert_sim"] = round(sum(sims.values()) / len(sims), 5)
        point["expert_sim_max"] = round(max(sims.values()), 5)
        for n, v in sims.items():
            writer.add_scalar(f"moe_sim/{n}", v, step)
    writer.add_scalar("dev/mer_ctc_greedy", dev_mer, step)
    with open(curve_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(point) + "\n")
    return point


def log_train_scalars(
    writer: Any,
    stats: dict[str, float],
    lr: float,
    grad_norm: float,
    moe_stats: dict[str, dict[str, torch.Tensor]],
    step: int,
) -> None:
    """TensorBoard scalars of one logged training step: its float stats, the learning rate,
    the gradient norm and the MoE layers' statistics (already averaged over ranks)."""
    for k, v in stats.items():
        writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/grad_norm", grad_norm, step)
    for name, stats in moe_stats.items():
        for k, v in stats.items():
            if v.numel() == 1:
                writer.add_scalar(f"moe/{name}/{k}", float(v), step)
