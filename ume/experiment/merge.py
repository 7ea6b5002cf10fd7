"""Merge workdirs: runs trained side by side in two workdirs (one per core) join one table.

Example:
    ume experiment --preset large --workdir work_b --runs moe_scratch   # beside work_a
    ume experiment --preset large --workdir work_a --merge-from work_b
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ume.config import ConfigError
from ume.expdir import MODEL_FILE
from ume.experiment.evaluate import update_results
from ume.experiment.fingerprint import file_sha256
from ume.experiment.plan import check_runs
from ume.experiment.recipe import run_start
from ume.experiment.recipes import _finished

log = logging.getLogger(__name__)


def _is_run(name: str, user: dict[str, Path] | None) -> bool:
    try:
        check_runs([name], "merge", user)
    except ConfigError:
        return False
    return True


def merge_runs(
    src: Path,
    work: Path,
    plan_set: list[str] | None = None,
    user: dict[str, Path] | None = None,
) -> list[str]:
    """Copy the finished runs of workdir `src` (run dirs and evaluated results rows) into `work`,
    so runs trained side by side in two workdirs (one per core) are compared in one table.
    Refuses when the two test sets differ, when `src` was made with other plan changes
    (`--set`) than `plan_set`, or when a run that continues the dense model started from a
    different dense model than `work`'s. Runs `work` already finished are kept; dirs that are
    no run of a recipe (shipped, composed, or `user`'s --recipe files) are left alone.
    Returns the names copied, sorted.

    Example:
        ume experiment --preset large --workdir work_b --runs moe_scratch   # beside work_a
        ume experiment --preset large --workdir work_a --merge-from work_b
    """
    src_runs, runs_dir = src / "runs", work / "runs"
    if not src_runs.is_dir():
        raise FileNotFoundError(f"--merge-from {src}: no runs/ directory there")
    for rel in ("data/test/text", "data/dev/text"):
        a, b = src / rel, work / rel
        if a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes():
            raise ConfigError(
                f"--merge-from {src}: {a} differs from {b}; runs on different corpora "
                "cannot share a table (use the same --preset, or merge into a workdir of it)"
            )
    src_results = {}
    if (src / "results.json").is_file():
        src_results = json.loads((src / "results.json").read_text())
    src_rows = src_results.get("runs", {})
    if src_results.get("plan_set", []) != list(plan_set or []):
        raise ConfigError(
            f"--merge-from {src}: it was made with --set {src_results.get('plan_set') or '(none)'}"
            f", this workdir with {list(plan_set or []) or '(none)'}; only runs of one plan "
            "share a table"
        )
    mine, theirs = runs_dir / "dense" / MODEL_FILE, src_runs / "dense" / MODEL_FILE
    same_dense = None  # hashed on first need
    copied = []
    names = sorted(p.name for p in src_runs.iterdir() if _is_run(p.name, user))
    for name in names:
        if name == "dense" or not _finished(src_runs / name) or _finished(runs_dir / name):
            continue
        start = run_start(name, user)
        if start == "dense":
            if same_dense is None:
                same_dense = (
                    mine.is_file() and theirs.is_file() and file_sha256(mine) == file_sha256(theirs)
                )
            if not same_dense:
                raise ConfigError(
                    f"--merge-from {src}: run {name!r} continues {theirs}, which is not this "
                    f"workdir's dense model {mine}; train it with --model {runs_dir / 'dense'}"
                )
        base = start.removeprefix("run:") if start.startswith("run:") else None
        if base and _finished(runs_dir / base):
            a, b = runs_dir / base / MODEL_FILE, src_runs / base / MODEL_FILE
            if not b.is_file() or file_sha256(a) != file_sha256(b):
                raise ConfigError(
                    f"--merge-from {src}: run {name!r} continues {src_runs / base}, which is not "
                    f"this workdir's {base} ({runs_dir / base}); merge both or neither"
                )
        shutil.copytree(src_runs / name, runs_dir / name, dirs_exist_ok=True)
        row = src_rows.get(name)
        if row and row.get("evaluated"):
            update_results(work / "results.json", name, row)
        copied.append(name)
        log.info("merged run %s from %s", name, src)
    return copied
