"""ume.train.monitor: the dev curve point (curve.jsonl keys, expert similarity) and the
TensorBoard scalar names the trainer writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ume.config import MoEConfig
from ume.model.moe import MoEFeedForward
from ume.train.monitor import log_train_scalars, record_dev_point


class _Writer:
    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = float(value)


def test_dev_point_with_expert_similarity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {f"l{i}": MoEFeedForward(8, 16, "swish", 0.0, MoEConfig(num_experts=4)) for i in (0, 1)}
    )
    with torch.no_grad():  # experts start as copies; make layer 1's differ
        for p in model["l0"].parameters():
            if p.dim() >= 2 and p.size(0) == 4:
                p.copy_(p[:1].expand_as(p))
        for p in model["l1"].parameters():
            p.add_(torch.randn_like(p))
    sims = {n: m.similarity_summary()[0] for n, m in model.items()}
    assert sims["l1"] < sims["l0"]
    w = _Writer()
    curve = tmp_path / "curve.jsonl"
    for step in (10, 20):
        point = record_dev_point(model, w, curve, step, 90.0, 42.5)
    lines = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [p["step"] for p in lines] == [10, 20] and lines[-1] == point
    assert point["minutes"] == 1.5 and point["dev_mer"] == 42.5
    assert point["expert_sim"] == round((sims["l0"] + sims["l1"]) / 2, 5)
    assert point["expert_sim_max"] == round(sims["l0"], 5)
    assert w.scalars["moe_sim/l1"] == sims["l1"] and w.scalars["dev/mer_ctc_greedy"] == 42.5


def test_dense_point_and_train_scalars(tmp_path: Path) -> None:
    w = _Writer()
    point = record_dev_point(nn.Linear(2, 2), w, tmp_path / "c.jsonl", 5, 0.0, 10.0)
    assert set(point) == {"step", "minutes", "dev_mer"}  # no similarity for a dense model
    stats = {"enc.moe": {"load_max": torch.tensor(0.75), "load": torch.ones(4)}}
    log_train_scalars(w, {"loss": 2.0}, 1e-3, 0.5, stats, step=5)
    assert w.scalars["train/loss"] == 2.0 and w.scalars["train/lr"] == 1e-3
    assert w.scalars["train/grad_norm"] == 0.5
    assert w.scalars["moe/enc.moe/load_max"] == 0.75 and "moe/enc.moe/load" not in w.scalars


def test_train_clock_counts_laps_and_excludes_time_before_restart() -> None:
    """Training time is the sum of laps; what happens before restart() (evaluation,
    checkpointing) is not counted."""
    import time

    from ume.train.trainer import TrainClock

    clock = TrainClock()
    time.sleep(0.05)
    wall, cpu = clock.lap()
    assert wall >= 0.05 and cpu >= 0.0
    time.sleep(0.2)  # "evaluation"
    clock.restart()
    wall, _ = clock.lap()
    assert wall < 0.2
