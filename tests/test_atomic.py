"""ume.atomic: the one temp-file-fsync-rename helper, and the rule that nothing else in ume/
renames files into place by hand."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from ume.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_tree,
    publish,
)

PKG = Path(__file__).resolve().parents[1] / "ume"


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """Records "file" / "dir" for every os.fsync call."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_writes_replace_the_target_and_fsync_file_then_directory(
    tmp_path: Path, fsyncs: list[str]
) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_json({"中": 1}, target)
    assert json.loads(target.read_text(encoding="utf-8")) == {"中": 1}
    assert "中" in target.read_text(encoding="utf-8")  # not \\u-escaped
    assert fsyncs == ["file", "dir"]
    atomic_write_text(tmp_path / "t.txt", "a\nb\n")
    assert (tmp_path / "t.txt").read_bytes() == b"a\nb\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "t.txt"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and str(os.getpid()) in tmp.name
        tmp.write_bytes(b"new weights")
    assert target.read_bytes() == b"new weights"


def test_directory_publish_fsyncs_every_file(tmp_path: Path, fsyncs: list[str]) -> None:
    tmp = tmp_path / "step-1.tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "a").write_text("1")
    (tmp / "sub" / "b").write_text("2")
    fsync_tree(tmp)
    assert fsyncs.count("file") == 2 and fsyncs.count("dir") == 2
    publish(tmp, tmp_path / "step-1")
    assert (tmp_path / "step-1" / "sub" / "b").read_text() == "2" and not tmp.exists()


def _hand_rolled_renames(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if f.attr in ("replace", "rename") and isinstance(f.value, ast.Name) and f.value.id == "os":
            out.append(f"{path.relative_to(PKG.parent)}:{node.lineno} os.{f.attr}")
        elif f.attr == "rename" and not node.keywords and len(node.args) == 1:
            out.append(f"{path.relative_to(PKG.parent)}:{node.lineno} .rename()")
    return out


def test_no_hand_rolled_temp_and_rename_outside_ume_atomic() -> None:
    bad = [
        hit
        for p in sorted(PKG.rglob("*.py"))
        if p.name != "atomic.py"
        for hit in _hand_rolled_renames(p)
    ]
    assert not bad, "use ume.atomic (atomic_write_*/atomic_path/publish) instead of: " + ", ".join(
        bad
    )
