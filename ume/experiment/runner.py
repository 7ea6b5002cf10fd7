"""`ume experiment`: the UME paper's comparison in one resumable command.

Runs (each a complete experiment dir WORKDIR/runs/<run>/, skipped when already finished,
resumed from its last checkpoint when interrupted):
    dense            the starting dense model (bundled, fine-tuned by the demo, or --from-scratch)
    dense_continued  the dense model trained for the same extra steps UME gets
    dense_continued_frozen  the same with UME's phases: phase 1 trains only the dense FFNs that
                     UME turns into MoE layers (control: is it the frozen backbone or the experts?)
    ume              upcycle -> phase 1 (experts + routers only) -> phase 2 (all), balancing on
    ume_no_freeze    ablation: no freezing phase
    ume_no_balance   ablation: balance and z-loss coefficients 0
    ume_drop         ablation: Drop-Upcycling (re-initialise a fraction of expert hidden units)
    moe_scratch      the same MoE shape trained from random initialisation
    ume_top1         speed variant: UME with top-1 routing (×1.0 dense FLOPs; docs/PERFORMANCE.md)
    ume_one_slot     speed variant: UME with MoE in the second encoder FFN only (6 MoE layers)
    dense_wide       capacity control: dense with the MoE's total FFN size, from scratch
    dense_wide_continued / moe_scratch_continued  dense_wide / moe_scratch trained for the
                     same extra steps as dense_continued (capacity at equal training)

Writes WORKDIR/results.json, WORKDIR/results.md and PNG plots (dev MER vs training minutes,
expert load of the UME model).

Example:
    ume experiment --preset quick --workdir work
    ume experiment --preset paper --workdir work_paper --runs dense,dense_continued,ume
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
from ume.experiment.fingerprint import model_fingerprint
from ume.experiment.merge import merge_runs
from ume.experiment.plan import (
    ALL_RUNS,
    BUNDLED,
    ExperimentPlan,
    check_runs,
    load_plan,
    starts_from_dense,
)
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
) -> dict:
    """Run (or resume) the preset's runs; returns the merged results dict. `merge_from`:
    workdirs whose finished runs are copied in first (see `merge_runs`). `plan_set`: `key=value`
    changes to the preset's plan (`--set`), recorded in results.json; a workdir keeps the ones
    it was made with (another set is refused: use a new workdir)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    plan = load_plan(preset, plan_set)
    plan_set = list(plan_set or [])
    data = work / "data"
    synthesize(plan.corpus, data, seed=0)
    runs_dir = work / "runs"
    dense = runs_dir / "dense"
    todo = runs or plan.runs
    check_runs(todo, "--runs")
    # moe_scratch alone needs no dense model (a second workdir can run it beside the first)
    needs_dense = any(r == "dense" or starts_from_dense(r) for r in todo)
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
        merge_runs(Path(other), work, plan_set)
    if merge_from and results_path.is_file():  # merged rows were written to results.json
        results = json.loads(results_path.read_text())
    for name in todo:
        t0 = time.time()
        if name != "dense":
            run_one(name, plan, preset, work, dense)
        made_by = model_fingerprint(runs_dir / name)  # a row scores the run dir that made it
        old = results["runs"].get(name, {})
        if not old.get("evaluated") or old.get("recipe") != made_by:
            row = evaluate_run(runs_dir / name, data)
            row["curve"] = _curve(runs_dir / name)
            row["evaluated"] = True
            row["recipe"] = made_by
            row["wall_seconds_this_session"] = round(time.time() - t0, 1)
            results = update_results(results_path, name, row)
        elif "train_subset_mer" not in results["runs"][name]:  # rows from before the column
            row = dict(results["runs"][name])
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
    )
    print(format_results(results))
    return 0


__all__ = [
    "ALL_RUNS",
    "ExperimentPlan",
    "add_comparisons",
    "best_trained",
    "load_plan",
    "main_experiment",
    "merge_runs",
    "minutes_to_reach",
    "run_experiment",
    "run_one",
]
