"""`ume experiment`: the UME paper's comparison in one resumable command.

Each run is a recipe (ume/recipes/NAME.yaml, or your own file passed with --recipe; the
format: docs/recipes.md) made into a complete experiment dir WORKDIR/runs/<run>/, skipped when
already finished, resumed from its last checkpoint when interrupted. The preset's plan
(configs/experiment_PRESET.yaml) says which runs, and the numbers the recipes refer to.
The main runs:
    dense            the starting dense model (bundled, --model DIR, or --from-scratch)
    dense_continued  the dense model trained for the same extra steps UME gets
    ume              upcycle -> phase 1 (experts + routers only) -> phase 2 (all)
    moe_scratch      the same MoE shape trained from random initialisation
and ablations, capacity controls and symmetry breakers (one file each in ume/recipes/).

Writes WORKDIR/results.json, WORKDIR/results.md and PNG plots (dev MER vs training minutes,
expert load of the UME model).

Example:
    ume experiment --preset quick --workdir work
    ume experiment --preset paper --workdir work_paper --runs dense,dense_continued,ume
    ume experiment --preset quick --workdir work --recipe my_recipe.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from ume.config import ConfigError, preset_config
from ume.data.synth import synthesize
from ume.expdir import MODEL_FILE, atomic_write_json
from ume.experiment.evaluate import evaluate_run, format_results, train_subset_mer, update_results
from ume.experiment.fingerprint import model_fingerprint, weights_identity
from ume.experiment.merge import merge_runs
from ume.experiment.plan import BUNDLED, ExperimentPlan, check_runs, load_plan
from ume.experiment.recipe import run_start, shipped_recipes, user_recipes
from ume.experiment.recipes import _finished, _train, run_one
from ume.experiment.report import (
    _curve,
    add_comparisons,
    add_significance,
    best_trained,
    minutes_to_reach,
    plot_curves,
)

log = logging.getLogger(__name__)


def run_experiment(
    preset: str,
    workdir: str | Path,
    dense_dir: str | Path | None = None,
    runs: list[str] | None = None,
    demo: bool = False,
    from_scratch: bool = False,
    merge_from: list[str | Path] | None = None,
    plan_set: list[str] | None = None,
    recipe_files: list[str | Path] | None = None,
) -> dict:
    """Run (or resume) the preset's runs; returns the merged results dict. `merge_from`:
    workdirs whose finished runs are copied in first (see `merge_runs`). `plan_set`: `key=value`
    changes to the preset's plan (`--set`), recorded in results.json; a workdir keeps the ones
    it was made with (another set is refused: use a new workdir). `recipe_files`: your own
    recipes (`--recipe`), run after `runs` (default with them: the recipes, after dense when
    one continues it)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    plan = load_plan(preset, plan_set)
    plan_set = list(plan_set or [])
    data = work / "data"
    synthesize(plan.corpus, data, seed=0)
    runs_dir = work / "runs"
    dense = runs_dir / "dense"
    user = user_recipes(recipe_files, plan)
    todo = list(runs or ([] if user else plan.runs))
    check_runs(todo, "--runs", user)
    todo += [n for n in user if n not in todo]
    if user and not runs and any(run_start(n, user) == "dense" for n in user):
        todo.insert(0, "dense")  # the baseline row of runs that continue it
    # moe_scratch alone needs no dense model (a second workdir can run it beside the first)
    needs_dense = any(run_start(r, user) in ("given", "dense") for r in todo)
    if needs_dense and not _finished(dense):
        src = Path(dense_dir) if dense_dir else BUNDLED
        if not (from_scratch or dense_dir or plan.bundled_dense):
            raise ConfigError(
                f"preset {preset!r} trains on the {plan.corpus!r} corpus, not the bundled dense "
                "model's: pass --from-scratch (train dense on it) or --model DENSE_EXPDIR"
            )
        if from_scratch:
            _train(dense, data, preset_config(plan.model_config), [], None)
        elif src.resolve() != dense.resolve():
            if not (src / MODEL_FILE).is_file():
                raise FileNotFoundError(
                    f"dense model {src} not found; pass --model or --from-scratch"
                )
            shutil.copytree(src, dense, dirs_exist_ok=True)
            if not (dense / "train_info.json").is_file():
                card = (
                    json.loads((src / "card.json").read_text())
                    if (src / "card.json").is_file()
                    else {}
                )
                (dense / "train_info.json").write_text(
                    json.dumps(
                        {
                            "steps": card.get("train_steps"),
                            "train_seconds": card.get("train_seconds"),
                            "curve": card.get("curve", []),
                        }
                    )
                )
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    made_with = results.get("plan_set", [])
    if results["runs"] and made_with != plan_set:
        raise ConfigError(
            f"{work} was made with --set {made_with or '(none)'}, not {plan_set or '(none)'}: "
            "rerun with the same --set, or use a new --workdir for the changed plan"
        )
    if plan_set and made_with != plan_set:
        results["plan_set"] = plan_set
        atomic_write_json(results, results_path)
    for other in merge_from or []:
        merge_runs(Path(other), work, plan_set, user)
    if merge_from and results_path.is_file():  # merged rows were written to results.json
        results = json.loads(results_path.read_text())
    for name in todo:
        t0 = time.time()
        if run_start(name, user) != "given":
            run_one(name, plan, preset, work, dense, user)
        made_by = model_fingerprint(runs_dir / name)  # a row scores the run dir that made it
        weights = weights_identity(runs_dir / name)  # ... and the weights it holds
        old = results["runs"].get(name, {})
        stale = old.get("recipe") != made_by or old.get("weights", weights) != weights
        if not old.get("evaluated") or stale:
            row = evaluate_run(runs_dir / name, data)
            row["curve"] = _curve(runs_dir / name)
            row["evaluated"] = True
            row["recipe"] = made_by
            row["weights"] = weights
            row["start"] = run_start(name, user)
            row["wall_seconds_this_session"] = round(time.time() - t0, 1)
            results = update_results(results_path, name, row)
        elif "weights" not in old or "train_subset_mer" not in old:  # rows from before those
            row = dict(old, weights=weights)  # the weights the row scored: the run's own
            if "train_subset_mer" not in row:
                row["train_subset_mer"] = train_subset_mer(runs_dir / name, data)
            results = update_results(results_path, name, row)
    results = add_significance(add_comparisons(results), runs_dir, data)
    atomic_write_json(results, results_path)
    (work / "results.md").write_text(format_results(results) + "\n", encoding="utf-8")
    plot_curves(results, work / "dev_mer_curves.png")
    if (runs_dir / "ume" / MODEL_FILE).is_file():
        from ume.moe_report import inspect_experiment

        rep = inspect_experiment(runs_dir / "ume", data / "dev", png=work / "expert_load.png")
        results["ume_inspect"] = {
            "dead_experts": sum(len(layer["dead"]) for layer in rep["layers"]),
            "min_load": min((min(layer["load"]) for layer in rep["layers"]), default=None),
            "warnings": rep.get("warnings", [])[:20],
        }
        atomic_write_json(results, results_path)
    return results


def main_experiment(args: argparse.Namespace) -> int:
    runs = args.runs.split(",") if args.runs else None
    results = run_experiment(
        args.preset,
        args.workdir,
        dense_dir=args.model,
        runs=runs,
        from_scratch=args.from_scratch,
        merge_from=args.merge_from,
        plan_set=args.set,
        recipe_files=getattr(args, "recipe", None),
    )
    print(format_results(results))
    return 0


__all__ = [
    "ExperimentPlan",
    "add_comparisons",
    "best_trained",
    "load_plan",
    "main_experiment",
    "merge_runs",
    "minutes_to_reach",
    "run_experiment",
    "run_one",
    "shipped_recipes",
]
