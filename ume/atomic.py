"""Atomic file writes: a reader (or a run resumed after a crash or kill -9) sees either the old
file or the complete new one, never a torn one.

Every write goes to a temp file in the target's directory (same filesystem, so the rename is
atomic), is flushed and fsync'ed, renamed over the target with os.replace, and then the
directory is fsync'ed so the rename itself survives a power loss. The temp name carries the
process id, so processes writing the same target (runs sharing a cache) never share a temp file.

Example:
    >>> atomic_write_json({"steps": 10}, "runs/dense/train_info.json")
    >>> atomic_write_text("data/train/text", "utt1 你好\\n")
    >>> with atomic_path("model.safetensors") as tmp:   # for writers that want a file name
    ...     save_file(tensors, str(tmp))
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "fsync_tree",
    "publish",
    "temp_path",
]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, making renames and new entries in it durable (no-op where the
    platform cannot open directories, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under directory `path`, then the directories themselves, before the
    directory is published with `publish` (e.g. a checkpoint written as step-N.tmp/)."""
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        _fsync_file(f)
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(d)
    fsync_dir(root)


def temp_path(path: str | os.PathLike) -> Path:
    """The temp name `atomic_path` uses for `path`: same directory, `<name>.<pid>.tmp`."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a complete temp file or directory onto `path` and fsync the parent directory.
    The caller has already fsync'ed the contents."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path` for any writer (safetensors, soundfile, torch.save...).
    On a normal exit the temp file is fsync'ed and renamed onto `path`; on an exception it is
    removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically, as given ("\\n" line ends stay "\\n" everywhere)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(obj: object, path: str | os.PathLike, indent: int | None = 2) -> None:
    """Write `obj` as UTF-8 JSON (non-ASCII kept readable) to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))
