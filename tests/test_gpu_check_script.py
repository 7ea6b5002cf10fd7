"""scripts/gpu_check.sh, without a GPU: it parses, refuses an unknown PARTS, and its MoE layer
step rehearsed on the CPU (PARTS=moe MOE_DEVICE=cpu, tiny shapes) writes the per-dtype rows and
the summary a GPU session reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", **env}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "w")],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_script_parses() -> None:
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_unknown_parts_is_refused(tmp_path: Path) -> None:
    out = run_script(tmp_path, PARTS="everything")
    assert out.returncode == 2
    assert "PARTS=everything: use all, train or moe" in out.stderr


@pytest.mark.slow
def test_moe_step_rehearsed_on_cpu(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        PARTS="moe",
        MOE_DEVICE="cpu",
        MOE_SHAPES="24,16,4,2",
        MOE_REPEATS="3",
        MOE_BUDGET="0.05",
    )
    assert out.returncode == 0, out.stderr + out.stdout
    w = tmp_path / "w"
    summary = json.loads((w / "bench_moe_cpu_summary.json").read_text())
    assert set(summary) == {"float32", "bfloat16"}
    for dtype, part in summary.items():
        rows = json.loads((w / f"bench_moe_cpu_{dtype}.json").read_text())
        assert part["dtype"] == dtype and part["device"] == "cpu" and part["gpu"] is None
        assert part["autocast"] == (dtype == "bfloat16")
        assert [(c["tokens"], c["pass"]) for c in part["cells"]] == [(24, "fwd"), (24, "fwd_bwd")]
        for cell, row in zip(part["cells"], rows, strict=True):
            assert cell["ume_tok_s"] == row["ours_tok_s"] and cell["ume_vs_dense"] > 0
            assert cell["ume_vs_dense"] == row["tok_s_vs_dense"]
            assert cell["grouped_vs_ume"] == pytest.approx(1 / row["ratio_grouped"], rel=2e-3)
    assert "UME/dense" in out.stdout and "bench_moe_cpu_" in out.stdout
