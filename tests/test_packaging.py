"""Packaging: installing ume must not replace the torch build a user already has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_torch_is_a_range_not_a_pin() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = [d for d in deps if re.match(r"torch\b", d)]
    assert len(torch_req) == 1, deps
    assert "==" not in torch_req[0] and ">=" in torch_req[0], torch_req[0]


def test_setup_script_keeps_the_cpu_pin_before_the_install() -> None:
    lines = (ROOT / "scripts" / "setup.sh").read_text().splitlines()
    pin = next(i for i, s in enumerate(lines) if re.search(r"pip install .*torch==", s))
    editable = next(i for i, s in enumerate(lines) if re.search(r"pip install .*-e ", s))
    assert pin < editable
