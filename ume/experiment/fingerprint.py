"""Run recipes: what each run of `ume experiment` was made from, stored in the run dir, so that a
finished run (or an `_init_*` upcycled model) is reused only by the plan that made it.

A recipe is a JSON dict: for an upcycled init dir the dense model's weights identity and the
upcycling arguments (experts, top_k, slots, ...); for a trained run the hash of the config's
parsed content (`config_sha256`: editing a comment changes nothing), the overrides, the
freezing phases and the weights identity of the model it starts from. A start model is named
by the sha256 of its weights file, so retraining it (even with the same recipe) makes every
run derived from it a different run. RUN_DIR/recipe.json holds the recipe and its
fingerprint (sha256 of the canonical JSON). Reusing a run whose recipe differs from the
current plan's raises `RecipeMismatch`, naming the run, the fields and the fix.

Runs recorded in an older form (the start model named by its own recipe fingerprint, the
config hashed as bytes, ...) are accepted as they are; their start model's weights identity
is added to the record the first time (`start_weights`) and checked from then on.

Example:
    >>> fp = check_or_record(Path("work/runs/_init_ume"), {"kind": "upcycle", "experts": 8})
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ume.atomic import atomic_write_json
from ume.config import ConfigError
from ume.expdir import MODEL_FILE

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


class RecipeMismatch(ConfigError):
    """A run dir was made by another plan than the current one."""


def file_sha256(path: Path) -> str | None:
    """sha256 of a file (cached by path, size and mtime), None if it does not exist."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        with open(path, "rb") as f:
            _SHA_CACHE[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _SHA_CACHE[key]


def config_sha256(path: Path) -> str | None:
    """sha256 of a YAML config's parsed content (canonical JSON), None if it does not exist:
    comments and formatting do not count, so a comment-only edit keeps every run reusable."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return None
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    canonical = json.dumps(content, sort_keys=True, default=str)
    return "yaml:" + hashlib.sha256(canonical.encode()).hexdigest()


def fingerprint(recipe: dict) -> str:
    """sha256 of the recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def read_recipe(run_dir: Path) -> dict | None:
    """{"fingerprint": ..., "recipe": {...}} stored in run_dir, or None."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecipeMismatch(
            f"{path} is not valid JSON ({e}); delete {run_dir} to redo this run"
        ) from e
    if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
        raise RecipeMismatch(f"{path} holds no recipe; delete {run_dir} to redo this run")
    return data


def weights_identity(exp_dir: Path) -> str | None:
    """ "weights:<sha256 of exp_dir's weights file>", None if it has none: what a run starting
    from exp_dir starts from."""
    sha = file_sha256(Path(exp_dir) / MODEL_FILE)
    return f"weights:{sha}" if sha else None


def model_fingerprint(exp_dir: Path) -> str | None:
    """exp_dir's recorded recipe fingerprint if the experiment made it, else its weights
    identity: what its results row is scored under, and how older records name a start model."""
    rec = read_recipe(exp_dir)
    if rec is not None:
        return rec["fingerprint"]
    sha = file_sha256(Path(exp_dir) / MODEL_FILE)
    return f"weights:{sha}" if sha else None


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    ]


def check_or_record(
    run_dir: Path,
    recipe: dict,
    has_output: bool | None = None,
    legacy: list[dict] | None = None,
    start_weights: str | None = None,
) -> str:
    """Return the recipe's fingerprint after making sure run_dir belongs to it.

    `legacy`: the same recipe in older forms (e.g. the config hashed as file bytes, before
    `config_sha256`): a run recorded under one is the same run; its record is kept (runs made
    from it name its fingerprint) and that fingerprint is returned. `start_weights`: the
    weights identity of the model the run starts from; a legacy record gets it added the first
    time and is refused when it differs later (the start model was remade).

    - run_dir has a recipe: equal -> fine; different -> RecipeMismatch if run_dir holds output
      (weights or checkpoints), else the stale recipe is replaced (nothing was made from it).
    - run_dir has output but no recipe (made before recipes were stored): a warning; the
      current recipe is recorded, since there is no way to check it.
    - otherwise the recipe is recorded before anything is made.
    `has_output` defaults to "run_dir has model weights or checkpoints".
    """
    run_dir = Path(run_dir)
    fp = fingerprint(recipe)
    if has_output is None:
        has_output = (run_dir / MODEL_FILE).is_file() or (run_dir / "checkpoints").is_dir()
    old = read_recipe(run_dir)
    if old is not None and old.get("fingerprint") == fp:
        return fp
    older = {fingerprint(f): f for f in legacy or []}
    if old is not None and old.get("fingerprint") in older:
        seen = old.get("start_weights")
        if seen is not None and start_weights is not None and seen != start_weights:
            raise RecipeMismatch(
                f"{run_dir} was made from a start model whose weights have changed since "
                f"({seen} then, {start_weights} now), so it cannot be reused.\nDelete "
                f"{run_dir} (and the runs made from it) to redo it, or use another --workdir."
            )
        if seen is None and start_weights is not None:
            atomic_write_json(dict(old, start_weights=start_weights), run_dir / RECIPE_FILE)
        return old["fingerprint"]
    if old is not None and has_output:
        # name the differences from the closest form the run could have been recorded in
        diffs = [_differences(old["recipe"], r) for r in (recipe, *older.values())]
        diff = min(diffs, key=len)
        raise RecipeMismatch(
            f"{run_dir} was made by another plan than the current one, so it cannot be reused:\n  "
            + "\n  ".join(diff or ["(recipe fingerprints differ)"])
            + f"\nDelete {run_dir} (and the runs made from it) to redo it with the current plan, "
            "or use another --workdir."
        )
    if old is None and has_output:
        log.warning(
            "%s has no %s (made before run recipes were stored): reused without a check; "
            "delete it if it was made with other settings",
            run_dir,
            RECIPE_FILE,
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"fingerprint": fp, "recipe": recipe}, run_dir / RECIPE_FILE)
    return fp
