"""`ume bench symmetry`: do upcycled experts specialise, and does that beat more dense training?

A controlled probe of issue 13's mechanism, in a regime built to be what the paper assumes:
unlimited fresh data (every step draws new samples) and a dense model whose FFN is too small
for the task (capacity-bound), trained to saturation (cosine-annealed). The task: inputs from
C Gaussian clusters, each cluster with its own random teacher MLP; one narrow FFN cannot fit
all C teachers, an MoE that routes by cluster can.

    student: z = stem(x); z = z + FFN(LN(z)); y = head(LN(z))     FFN: FeedForward or MoE

Runs (all from the same saturated dense model, same extra steps and schedule, except the two
from-scratch controls):
    dense_continued   the dense model trained for the extra steps
    dense_wide        control: d_ff x E from scratch for dense + extra steps (capacity-bound?)
    ume               upcycle (copies, router N(0, 0.02)), phase 1 experts + router only
    ume_noise / ume_fast / ume_router_noise / ume_fine / ume_all: one symmetry breaker each
Reported per run: test MSE (fixed test set), relative change vs dense_continued, mean pairwise
expert similarity (within a group for fine-grained experts) and the routing's normalised
mutual information with the cluster id (0 = routing ignores content, 1 = one cluster per
expert choice), mean over seeds with the per-seed range.

Example:
    ume bench symmetry --seeds 3           # ~10 min at 1 thread
    ume bench symmetry --seeds 1 --steps 400 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
from torch import nn

from ume.config import MoEConfig
from ume.machine import machine_info
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward

D_IN, D_OUT, CLUSTERS, D_FF, EXPERTS = 32, 8, 8, 16, 8
RUNS = (
    "dense_continued",
    "dense_wide",
    "ume",
    "ume_noise",
    "ume_fast",
    "ume_router_noise",
    "ume_fine",
    "ume_all",
)


class Task:
    """C clusters x ~ N(mu_c, I), y = teacher_c(x): a random 2-layer tanh MLP per cluster."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(1000 + seed)
        self.mu = torch.randn(CLUSTERS, D_IN, generator=g) * 2.0  # (C, D)
        self.w1 = torch.randn(CLUSTERS, D_IN, 32, generator=g) / math.sqrt(D_IN)  # (C, D, 32)
        self.w2 = torch.randn(CLUSTERS, 32, D_OUT, generator=g) / math.sqrt(32)  # (C, 32, O)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        c = torch.randint(CLUSTERS, (n,), generator=g)  # (N,)
        x = self.mu[c] + torch.randn(n, D_IN, generator=g)  # (N, D)
        h = torch.tanh(torch.bmm(x.unsqueeze(1), self.w1[c]))  # (N, 1, 32)
        y = torch.bmm(h, self.w2[c]).squeeze(1) * 3.0  # (N, O)
        return x, y, c


class Student(nn.Module):
    def __init__(self, d_ff: int = D_FF) -> None:
        super().__init__()
        self.stem = nn.Linear(D_IN, D_IN)
        self.norm1, self.norm2 = nn.LayerNorm(D_IN), nn.LayerNorm(D_IN)
        self.ffn: nn.Module = FeedForward(D_IN, d_ff)
        self.head = nn.Linear(D_IN, D_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, O)
        z = self.stem(x)
        z = z + self.ffn(self.norm1(z).unsqueeze(0)).squeeze(0)
        return self.head(self.norm2(z))


def _train(
    model: Student,
    task: Task,
    steps: int,
    lr: float,
    seed: int,
    frozen_steps: int = 0,
    moe_lr_scale: tuple[float, float] = (1.0, 1.0),
) -> None:
    """AdamW, warm-up 5% then cosine to 0; fresh batches of 256 every step. During the first
    frozen_steps only experts + router learn (UME phase 1); moe_lr_scale = (phase 1, phase 2)."""
    g = torch.Generator().manual_seed(seed)
    moe_p = [p for n, p in model.named_parameters() if n.startswith("ffn.") and _is_moe(model)]
    rest = [p for p in model.parameters() if all(p is not q for q in moe_p)]
    groups = [{"params": rest}] + ([{"params": moe_p}] if moe_p else [])
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    model.train()
    for step in range(steps):
        frozen = step < frozen_steps
        scale = moe_lr_scale[0] if frozen else moe_lr_scale[1]
        mult = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.param_groups[0]["lr"] = 0.0 if frozen else lr * mult
        if moe_p:
            opt.param_groups[1]["lr"] = lr * mult * scale
        x, y, _ = task.sample(256, g)
        loss = nn.functional.mse_loss(model(x), y)
        aux = getattr(model.ffn, "aux_losses", {})
        total = loss + sum(aux.values()) if aux else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()


def _is_moe(model: Student) -> bool:
    return isinstance(model.ffn, MoEFeedForward)


@torch.no_grad()
def _evaluate(model: Student, test: tuple[torch.Tensor, ...]) -> dict:
    x, y, c = test
    model.eval()
    out = {"test_mse": float(nn.functional.mse_loss(model(x), y))}
    if _is_moe(model):
        moe = model.ffn
        out["expert_sim"] = moe.similarity_summary()[0]
        z = model.norm1(model.stem(x))
        _, top_e, _ = moe.route(z)  # (N, k)
        out["routing_nmi"] = _nmi(top_e[:, 0], c, moe.num_experts, CLUSTERS)
    return out


def _nmi(a: torch.Tensor, b: torch.Tensor, na: int, nb: int) -> float:
    """Mutual information of two labelings over entropy of b (0: independent, 1: b from a)."""
    joint = torch.zeros(na, nb).index_put_((a, b), torch.ones(a.numel()), accumulate=True)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * torch.log(p[nz] / (pa @ pb)[nz])).sum())
    hb = float(-(pb[pb > 0] * torch.log(pb[pb > 0])).sum())
    return mi / hb if hb > 0 else 0.0


def _upcycle(dense: Student, run: str, seed: int) -> tuple[Student, tuple[float, float]]:
    """The MoE student of a run and its expert/router lr scales (phase 1, phase 2)."""
    every = run == "ume_all"
    fine = run == "ume_fine" or every
    cfg = MoEConfig(
        num_experts=EXPERTS * (2 if fine else 1),
        top_k=2,
        groups=2 if fine else 1,
        router_init="normal",
        router_init_std=0.02,
        router_noise=0.3 if run == "ume_router_noise" or every else 0.0,
    )
    model = copy.deepcopy(dense)
    torch.manual_seed(seed)
    model.ffn = MoEFeedForward.from_dense(dense.ffn, cfg)
    model.ffn.reset_router()
    if run == "ume_noise" or every:
        from ume.upcycle.convert import _noise_upcycle

        ex = model.ffn.experts
        got = _noise_upcycle(
            {f"experts.{n}": getattr(ex, n).detach() for n in ("w_1", "b_1", "w_2", "b_2")},
            std=0.1,
            frac=0.25,
            gen=torch.Generator().manual_seed(seed),
        )
        with torch.no_grad():
            for n in ("w_1", "w_2"):
                getattr(ex, n).copy_(got[f"experts.{n}"])
    fast = run == "ume_fast" or every
    return model, (10.0, 2.0) if fast else (1.0, 1.0)


def run_probe(seeds: int = 3, dense_steps: int = 2000, steps: int = 1000) -> dict:
    """Train the dense student to saturation, then every run of RUNS; per-seed results."""
    per_seed: list[dict] = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        task = Task(seed)
        test = task.sample(8192, torch.Generator().manual_seed(10_000 + seed))
        dense = Student()
        _train(dense, task, dense_steps, 3e-3, seed)
        rows = {"dense": _evaluate(dense, test)}
        for run in RUNS:
            t0 = time.perf_counter()
            if run == "dense_wide":
                torch.manual_seed(seed)
                model = Student(D_FF * EXPERTS)
                _train(model, task, dense_steps, 3e-3, seed)
                _train(model, task, steps, 1e-3, seed + 1)
            elif run == "dense_continued":
                model = copy.deepcopy(dense)
                _train(model, task, steps, 1e-3, seed + 1)
            else:
                model, scales = _upcycle(dense, run, seed)
                rows[f"{run}_start"] = _evaluate(model, test)
                _train(model, task, steps, 1e-3, seed + 1, steps // 4, scales)  # phase 1: 25%
            rows[run] = _evaluate(model, test)
            rows[run]["seconds"] = round(time.perf_counter() - t0, 2)
        per_seed.append(rows)
    return {"machine": machine_info(), "seeds": per_seed, "summary": _summary(per_seed)}


def _summary(per_seed: list[dict]) -> dict:
    out = {}
    for run in ("dense", *RUNS):
        vals = {}
        for key in ("test_mse", "expert_sim", "routing_nmi"):
            xs = [s[run][key] for s in per_seed if key in s[run]]
            if xs:
                vals[key] = [round(sum(xs) / len(xs), 5), round(min(xs), 5), round(max(xs), 5)]
        rel = [100 * (s[run]["test_mse"] / s["dense_continued"]["test_mse"] - 1) for s in per_seed]
        vals["rel_vs_dense_continued_pct"] = [
            round(sum(rel) / len(rel), 2),
            round(min(rel), 2),
            round(max(rel), 2),
        ]
        start = [s[f"{run}_start"]["expert_sim"] for s in per_seed if f"{run}_start" in s]
        if start:
            vals["expert_sim_at_start"] = round(sum(start) / len(start), 5)
        out[run] = vals
    return out


def format_summary(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"symmetry probe, {len(res['seeds'])} seed(s); {m.get('machine', '?')}, "
        f"{m.get('threads', '?')} thread(s). Mean (min..max over seeds).",
        f"{'run':<18} {'test MSE':>22} {'vs dense_continued %':>24} {'expert sim start->end':>24}"
        f" {'routing NMI':>12}",
    ]
    for run, v in res["summary"].items():
        mse = "{:.4f} ({:.4f}..{:.4f})".format(*v["test_mse"])
        rel = "{:+.1f} ({:+.1f}..{:+.1f})".format(*v["rel_vs_dense_continued_pct"])
        sim = (
            f"{v['expert_sim_at_start']:.3f} -> {v['expert_sim'][0]:.3f}"
            if "expert_sim" in v
            else "-"
        )
        nmi = f"{v['routing_nmi'][0]:.3f}" if "routing_nmi" in v else "-"
        lines.append(f"{run:<18} {mse:>22} {rel:>24} {sim:>24} {nmi:>12}")
    return "\n".join(lines)


def add_symmetry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dense-steps", type=int, default=2000)
    p.add_argument("--steps", type=int, default=1000, help="extra steps of every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")


def main_symmetry(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.steps < 10 or args.dense_steps < 10:
        print("ume bench symmetry: error: --seeds >= 1, --steps and --dense-steps >= 10")
        return 2
    torch.set_num_threads(args.threads)
    res = run_probe(args.seeds, args.dense_steps, args.steps)
    print(json.dumps(res, indent=1) if args.json else format_summary(res))
    return 0
