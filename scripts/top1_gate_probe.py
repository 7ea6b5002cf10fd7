"""Which gradient should the top-1 gate give the router: ∇p or ∇log p = ∇p / p?

Both gates have the value 1 (the renormalised top-1 gate); they differ only in the router's
gradient. Setup: the `ume bench symmetry` task (Gaussian clusters, one teacher MLP per cluster)
and student; the dense student is trained to saturation, upcycled to 8 top-1 experts
(router N(0, 0.02²), expert weights noise-perturbed so the task loss reaches the router), then
trained for --steps more steps with each gate. Reported per gate: test MSE, the routing's
normalised mutual information with the cluster id, mean pairwise expert similarity (mean over
seeds, per-seed values in brackets).

    OMP_NUM_THREADS=1 python scripts/top1_gate_probe.py --seeds 5   # ~2 min at 1 thread
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from ume.bench.symmetry import EXPERTS, Student, Task, _evaluate, _train
from ume.config import MoEConfig
from ume.machine import cpu_model
from ume.model.moe import MoEFeedForward

GATES = ("p", "log_p")


def _moe_student(dense: Student, gate: str, seed: int) -> Student:
    cfg = MoEConfig(num_experts=EXPERTS, top_k=1, router_init="normal", router_init_std=0.02)
    model = copy.deepcopy(dense)
    torch.manual_seed(seed)
    model.ffn = MoEFeedForward.from_dense(dense.ffn, cfg)
    model.ffn.reset_router()
    model.ffn.router.top1_gradient = gate
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the same perturbation for both gates
        for w in (model.ffn.experts.w_1, model.ffn.experts.w_2):
            w.mul_(1 + 0.1 * torch.randn(w.shape, generator=g))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dense-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {g: [] for g in GATES}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        task = Task(seed)
        test = task.sample(8192, torch.Generator().manual_seed(10_000 + seed))
        dense = Student()
        _train(dense, task, args.dense_steps, 3e-3, seed)
        for gate in GATES:
            model = _moe_student(dense, gate, seed)
            _train(model, task, args.steps, 1e-3, seed + 1)
            rows[gate].append(_evaluate(model, test))
    print(f"machine: {cpu_model()}, 1 thread; seeds={args.seeds} steps={args.steps}")
    for gate, rs in rows.items():
        parts = []
        for key in ("test_mse", "routing_nmi", "expert_sim"):
            vals = [r[key] for r in rs]
            mean = sum(vals) / len(vals)
            parts.append(f"{key} {mean:.4f} [{', '.join(f'{v:.4f}' for v in vals)}]")
        print(f"gate ∇{gate:5s}  " + "  ".join(parts))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
