"""ume bench symmetry: the controlled probe of expert specialisation (issue 13)."""

from __future__ import annotations

import argparse

import torch

from ume.bench.symmetry import RUNS, _nmi, add_symmetry_args, main_symmetry, run_probe


def test_nmi_bounds() -> None:
    c = torch.arange(8).repeat(50)
    assert abs(_nmi(c, c, 8, 8) - 1.0) < 1e-6  # routing = cluster
    assert abs(_nmi(torch.zeros_like(c), c, 8, 8)) < 1e-6  # one expert for all: no information


def test_probe_runs_every_recipe() -> None:
    torch.set_num_threads(1)
    res = run_probe(seeds=1, dense_steps=30, steps=20)
    s = res["summary"]
    assert set(s) == {"dense", *RUNS}
    assert s["dense_continued"]["rel_vs_dense_continued_pct"] == [0.0, 0.0, 0.0]
    assert s["ume"]["expert_sim_at_start"] > 0.999  # exact copies before training
    assert s["ume_noise"]["expert_sim_at_start"] < s["ume"]["expert_sim_at_start"]
    for run in RUNS:
        if run.startswith("ume"):
            assert 0.0 <= s[run]["routing_nmi"][0] <= 1.0
    # upcycling is function-preserving: the MoE starts at the dense model's test loss
    seed0 = res["seeds"][0]
    assert abs(seed0["ume_start"]["test_mse"] - seed0["dense"]["test_mse"]) < 1e-4


def test_bad_arguments(capsys) -> None:
    p = argparse.ArgumentParser()
    add_symmetry_args(p)
    assert main_symmetry(p.parse_args(["--seeds", "0"])) == 2
    assert "--seeds >= 1" in capsys.readouterr().out
