"""`ume experiment --preset tiny`: every run end to end, results.json schema, resumability."""

from __future__ import annotations

import json
from pathlib import Path

from ume.cli import main

RUNS = (
    "dense",
    "dense_continued",
    "ume",
    "ume_no_freeze",
    "ume_no_balance",
    "ume_drop",
    "moe_scratch",
)
ROW_KEYS = (
    "test_mer",
    "test_cer_zh",
    "test_wer_en",
    "rtf_b1",
    "train_seconds",
    "params_total",
    "params_active",
    "heldout_mer",
    "rel_change_vs_dense_pct",
)


def test_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert main(["experiment", "--preset", "tiny", "--workdir", str(work), "--from-scratch"]) == 0
    res = json.loads((work / "results.json").read_text())
    assert set(res["runs"]) == set(RUNS)
    for name in RUNS:
        row = res["runs"][name]
        for k in ROW_KEYS:
            assert k in row, (name, k)
        assert (work / "runs" / name / "model.safetensors").is_file()
    dense, ume = res["runs"]["dense"], res["runs"]["ume"]
    assert ume["params_total"] > dense["params_total"]
    assert dense["params_active"] == dense["params_total"]
    assert dense["params_total"] < ume["params_active"] < ume["params_total"]
    # continued runs start their curve at the initial model (step 0)
    assert res["runs"]["ume"]["curve"][0]["step"] == 0
    for f in ("results.md", "dev_mer_curves.png", "expert_load.png"):
        assert (work / f).is_file(), f
    # a rerun skips finished runs (no retraining: train_info untouched)
    info = work / "runs" / "ume" / "train_info.json"
    before = info.stat().st_mtime_ns
    assert main(["experiment", "--preset", "tiny", "--workdir", str(work)]) == 0
    assert info.stat().st_mtime_ns == before
