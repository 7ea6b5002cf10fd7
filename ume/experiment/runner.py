"""`ume experiment`: the UME paper's comparison in one resumable command.

Runs (each a complete experiment dir WORKDIR/runs/<run>/, skipped when already finished,
resumed from its last checkpoint when interrupted):
    dense            the starting dense model (bundled, fine-tuned by the demo, or --from-scratch)
    dense_continued  the dense model trained for the same extra steps UME gets
    ume              upcycle -> phase 1 (experts + routers only) -> phase 2 (all), balancing on
    ume_no_freeze    ablation: no freezing phase
    ume_no_balance   ablation: balance and z-loss coefficients 0
    ume_drop         ablation: Drop-Upcycling (re-initialise a fraction of expert hidden units)
    moe_scratch      the same MoE shape trained from random initialisation
    ume_top1         speed variant: UME with top-1 routing (×1.0 dense FLOPs; docs/PERFORMANCE.md)
    ume_one_slot     speed variant: UME with MoE in the second encoder FFN only (6 MoE layers)

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
from dataclasses import dataclass, field
from pathlib import Path

from ume.bench.evaluate import evaluate_run, format_results, train_subset_mer, update_results
from ume.config import ConfigError, from_dict, load_config, preset_config
from ume.data.synth import synthesize
from ume.expdir import MODEL_FILE

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BUNDLED = REPO_ROOT / "models" / "dense_paper"
ALL_RUNS = (
    "dense",
    "dense_continued",
    "ume",
    "ume_no_freeze",
    "ume_no_balance",
    "ume_drop",
    "moe_scratch",
    "ume_top1",
    "ume_one_slot",
)


@dataclass
class ExperimentPlan:
    """Strict plan for one preset (configs/experiment_<preset>.yaml)."""

    runs: list[str] = field(default_factory=lambda: ["dense", "dense_continued", "ume"])
    extra_steps: int = 300  # steps dense_continued and every UME run train for
    extra_minutes: float = 0.0  # optional wall-clock cap per continued run (0 = none)
    lr: float = 1e-3
    warmup_steps: int = 30
    lr_schedule: str = "constant"  # "cosine" anneals to 0 at extra_steps
    freeze_steps: int = 100  # UME phase 1 length
    phase1_trainable: str = "moe"
    experts: int = 8
    top_k: int = 2
    slots: list[str] = field(default_factory=lambda: ["encoder_macaron", "encoder_ffn"])
    layers: str = "all"
    router_init: str = "normal"
    balance_coef: float = 0.01
    z_loss_coef: float = 0.001
    jitter: float = 0.0
    drop_upcycling: float = 0.5
    scratch_steps: int = 0  # 0 = same budget as the dense preset's max_steps
    scratch_minutes: float = 0.0
    eval_every: int = 100
    eval_max_utts: int = 200
    corpus: str = ""  # synthetic corpus preset (`ume data synth`); "" = the experiment's name
    model_config: str = ""  # config preset of from-scratch runs; "" = the experiment's name
    bundled_dense: bool = True  # False: the corpus differs from the bundled model's


def load_plan(preset: str) -> ExperimentPlan:
    import yaml

    path = preset_config(f"experiment_{preset}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    plan = from_dict(ExperimentPlan, data, where=str(path))
    plan.corpus = plan.corpus or preset
    plan.model_config = plan.model_config or preset
    check_runs(plan.runs, str(path))
    return plan


def check_runs(names: list[str], where: str) -> None:
    bad = [r for r in names if r not in ALL_RUNS]
    if bad:
        raise ConfigError(f"{where}: unknown run(s) {bad}; known runs: {list(ALL_RUNS)}")


def _finished(run_dir: Path) -> bool:
    return (run_dir / MODEL_FILE).is_file() and (run_dir / "train_info.json").is_file()


def _continue_overrides(plan: ExperimentPlan, extra: list[str] | None = None) -> list[str]:
    """Train overrides of every run that continues a trained model. The from-scratch warm-up
    curriculum (shortest-first first epoch, no SpecAugment or chunk training for
    curriculum_steps) is switched off: on a converged model it is a distribution shift that
    undid the dense model's progress for the first 2,000 steps (docs/RESULTS.md)."""
    return [
        "train.sortagrad=false",
        "train.curriculum_steps=0",
        f"train.max_steps={plan.extra_steps}",
        f"train.max_minutes={plan.extra_minutes}",
        f"train.lr={plan.lr}",
        f"train.warmup_steps={plan.warmup_steps}",
        f"train.lr_schedule={plan.lr_schedule}",
        f"train.eval_every={plan.eval_every}",
        f"train.eval_max_utts={plan.eval_max_utts}",
        f"train.checkpoint_every={plan.eval_every}",
        *(extra or []),
    ]


def _train(
    run_dir: Path,
    data: Path,
    config: Path,
    overrides: list[str],
    init: Path | None,
    phases: list[dict] | None = None,
) -> None:
    from ume.config import PhaseConfig
    from ume.train.trainer import Trainer

    if _finished(run_dir):
        log.info("%s already finished; skipping", run_dir.name)
        return
    cfg = load_config(config, overrides)
    if phases is not None:
        cfg.train.phases = [PhaseConfig(**p) for p in phases]
    Trainer(
        cfg,
        run_dir,
        str(data / "train"),
        str(data / "dev"),
        init_dir=str(init) if init else None,
        cache_dir=str(data / ".cache"),
    ).run()


def _upcycled(plan: ExperimentPlan, dense: Path, out: Path, **kw) -> Path:
    from ume.upcycle import upcycle_experiment

    if not (out / MODEL_FILE).is_file():
        args = dict(
            experts=plan.experts,
            top_k=plan.top_k,
            slots=plan.slots,
            layers=plan.layers,
            drop_ratio=0.0,
            router_init=plan.router_init,
            balance_coef=plan.balance_coef,
            z_loss_coef=plan.z_loss_coef,
        )
        args.update(kw)
        upcycle_experiment(dense, out, overwrite=True, **args)
    return out


def run_one(name: str, plan: ExperimentPlan, preset: str, work: Path, dense: Path) -> None:
    data, runs = work / "data", work / "runs"
    run_dir = runs / name
    ov = _continue_overrides(plan)
    two_phase = [
        {"steps": plan.freeze_steps, "trainable": plan.phase1_trainable},
        {"steps": 0, "trainable": "all"},
    ]
    jitter = [f"model.moe.jitter={plan.jitter}"]
    if name == "dense_continued":
        _train(run_dir, data, dense / "config.yaml", ov, dense)
    elif name == "ume":
        init = _upcycled(plan, dense, runs / "_init_ume")
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, two_phase)
    elif name == "ume_no_freeze":
        init = _upcycled(plan, dense, runs / "_init_ume")
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, [])
    elif name == "ume_no_balance":
        init = _upcycled(plan, dense, runs / "_init_ume_nobal", balance_coef=0.0, z_loss_coef=0.0)
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, two_phase)
    elif name == "ume_drop":
        init = _upcycled(plan, dense, runs / "_init_ume_drop", drop_ratio=plan.drop_upcycling)
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, two_phase)
    elif name == "ume_top1":  # the shapes that are fast enough at batch 16 (PERFORMANCE.md)
        init = _upcycled(plan, dense, runs / "_init_ume_top1", top_k=1)
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, two_phase)
    elif name == "ume_one_slot":
        init = _upcycled(plan, dense, runs / "_init_ume_one_slot", slots=["encoder_ffn"])
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, two_phase)
    elif name == "moe_scratch":
        steps = plan.scratch_steps or load_config(preset_config(plan.model_config)).train.max_steps
        moe = [
            f"model.moe.num_experts={plan.experts}",
            f"model.moe.top_k={plan.top_k}",
            f"model.moe.slots={json.dumps(plan.slots)}",
            f"model.moe.layers={plan.layers}",
            f"model.moe.router_init={plan.router_init}",
            f"model.moe.balance_coef={plan.balance_coef}",
            f"model.moe.z_loss_coef={plan.z_loss_coef}",
            f"train.max_steps={steps}",
            f"train.max_minutes={plan.scratch_minutes}",
            f"train.eval_every={plan.eval_every}",
            f"train.checkpoint_every={plan.eval_every}",
        ]
        _train(run_dir, data, preset_config(plan.model_config), moe, None)
    else:
        raise ConfigError(f"unknown run {name!r}")


def _curve(run_dir: Path) -> list[dict]:
    info = run_dir / "train_info.json"
    return json.loads(info.read_text()).get("curve", []) if info.is_file() else []


def minutes_to_reach(curve: list[dict], target: float) -> float | None:
    """Minutes of training until the dev MER is at or below `target` (None: never).
    A step-0 point is the starting model, not a result of this run, so it never counts."""
    for p in curve:
        if p["step"] > 0 and p["dev_mer"] <= target:
            return p["minutes"]
    return None


def best_trained(curve: list[dict]) -> float | None:
    """Best dev MER a run reached by training (step-0 point excluded)."""
    return min((p["dev_mer"] for p in curve if p["step"] > 0), default=None)


def add_comparisons(results: dict) -> dict:
    """Relative test-MER change vs dense, and minutes of each run's own training to reach three
    dev targets (ctc greedy on the dev subset, the curves' metric): the dense model's dev MER,
    UME's best, and the scratch MoE's best. `dense_minutes` is the dense model's training time,
    the sunk cost to add to an upcycled run's minutes for its cost "dense + UME"."""
    runs = results.get("runs", {})
    dense = runs.get("dense")
    curves = {k: v.get("curve", []) for k, v in runs.items()}
    start = curves.get("dense_continued") or curves.get("ume") or []
    dense_dev = start[0]["dev_mer"] if start and start[0]["step"] == 0 else None
    targets = {
        "dense": dense_dev,
        "ume": best_trained(curves.get("ume") or []),
        "scratch": best_trained(curves.get("moe_scratch") or []),
    }
    for row in runs.values():
        if dense and dense.get("test_mer") and row.get("test_mer") is not None:
            row["rel_change_vs_dense_pct"] = round(
                100 * (row["test_mer"] - dense["test_mer"]) / dense["test_mer"], 2
            )
        c = row.get("curve", [])
        for name, target in targets.items():
            hit = minutes_to_reach(c, target) if target is not None and c else None
            row[f"minutes_to_{name}_dev_mer"] = hit
    results["dense_dev_mer_greedy"] = dense_dev
    results["best_dev_mer_greedy"] = targets
    secs = (dense or {}).get("train_seconds")
    results["dense_minutes"] = round(secs / 60, 2) if secs else None
    return results


STARTS_FROM_DENSE = tuple(r for r in ALL_RUNS if r not in ("dense", "moe_scratch"))


def add_significance(results: dict, runs_dir: Path, data: Path, replicates: int = 1000) -> dict:
    """Paired bootstrap of each run's test hypotheses against the dense run's (same utterances):
    rel_ci95_vs_dense_pct (95% interval of the relative MER change) and p_better_than_dense."""
    from ume.data.manifest import read_text_file
    from ume.decode.significance import bootstrap_errors, utterance_errors

    ref_path, dense_hyp = data / "test" / "text", runs_dir / "dense" / "hyp_test.txt"
    if not (ref_path.is_file() and dense_hyp.is_file()):
        return results
    refs = read_text_file(ref_path)
    keys = sorted(refs)
    base = utterance_errors(refs, read_text_file(dense_hyp), keys)  # (N, 2), once for all runs
    for name, row in results.get("runs", {}).items():
        hyp = runs_dir / name / "hyp_test.txt"
        if name == "dense" or not hyp.is_file():
            continue
        res = bootstrap_errors(base, utterance_errors(refs, read_text_file(hyp), keys), replicates)
        row["rel_ci95_vs_dense_pct"] = res["rel_ci95_pct"]
        row["p_better_than_dense"] = res["p_b_better"]
    return results


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def merge_runs(src: Path, work: Path) -> list[str]:
    """Copy the finished runs of workdir `src` (run dirs and evaluated results rows) into `work`,
    so runs trained side by side in two workdirs (one per core) are compared in one table.
    Refuses when the two test sets differ, or when a run that continues the dense model started
    from a different dense model than `work`'s. Runs `work` already finished are kept.
    Returns the names copied.

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
    src_rows = {}
    if (src / "results.json").is_file():
        src_rows = json.loads((src / "results.json").read_text()).get("runs", {})
    mine, theirs = runs_dir / "dense" / MODEL_FILE, src_runs / "dense" / MODEL_FILE
    same_dense = None  # hashed on first need
    copied = []
    for name in ALL_RUNS:
        if name == "dense" or not _finished(src_runs / name) or _finished(runs_dir / name):
            continue
        if name in STARTS_FROM_DENSE:
            if same_dense is None:
                same_dense = (
                    mine.is_file() and theirs.is_file() and _sha256(mine) == _sha256(theirs)
                )
            if not same_dense:
                raise ConfigError(
                    f"--merge-from {src}: run {name!r} continues {theirs}, which is not this "
                    f"workdir's dense model {mine}; train it with --model {runs_dir / 'dense'}"
                )
        shutil.copytree(src_runs / name, runs_dir / name, dirs_exist_ok=True)
        row = src_rows.get(name)
        if row and row.get("evaluated"):
            update_results(work / "results.json", name, row)
        copied.append(name)
        log.info("merged run %s from %s", name, src)
    return copied


def plot_curves(results: dict, path: Path) -> None:
    """Dev MER vs wall-clock, two panels: each run's own training minutes (the dense model as a
    sunk cost, as the paper counts), and cumulative minutes, where runs that start from the dense
    model are shifted right by its training time (the cost of dense + UME together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset = results.get("dense_minutes") or 0.0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, cumulative in zip(axes, (False, True)):
        for name, row in results.get("runs", {}).items():
            c = row.get("curve") or []
            if not c:
                continue
            shift = offset if cumulative and name in STARTS_FROM_DENSE else 0.0
            xs = [p["minutes"] + shift for p in c]
            ax.plot(xs, [p["dev_mer"] for p in c], marker=".", label=name)
        ax.set_xlabel(
            "cumulative minutes (dense training + the run's own)"
            if cumulative
            else "the run's own training wall-clock (minutes)"
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dev MER % (ctc greedy, dev subset)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(
    preset: str,
    workdir: str | Path,
    dense_dir: str | Path | None = None,
    runs: list[str] | None = None,
    demo: bool = False,
    from_scratch: bool = False,
    merge_from: list[str | Path] | None = None,
) -> dict:
    """Run (or resume) the preset's runs; returns the merged results dict. `merge_from`:
    workdirs whose finished runs are copied in first (see `merge_runs`)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    plan = load_plan(preset)
    data = work / "data"
    synthesize(plan.corpus, data, seed=0)
    runs_dir = work / "runs"
    dense = runs_dir / "dense"
    todo = runs or plan.runs
    check_runs(todo, "--runs")
    # moe_scratch alone needs no dense model (a second workdir can run it beside the first)
    needs_dense = any(r == "dense" or r in STARTS_FROM_DENSE for r in todo)
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
    for other in merge_from or []:
        merge_runs(Path(other), work)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    for name in todo:
        t0 = time.time()
        if name != "dense":
            run_one(name, plan, preset, work, dense)
        if name not in results["runs"] or not results["runs"][name].get("evaluated"):
            row = evaluate_run(runs_dir / name, data)
            row["curve"] = _curve(runs_dir / name)
            row["evaluated"] = True
            row["wall_seconds_this_session"] = round(time.time() - t0, 1)
            results = update_results(results_path, name, row)
        elif "train_subset_mer" not in results["runs"][name]:  # rows from before the column
            row = dict(results["runs"][name])
            row["train_subset_mer"] = train_subset_mer(runs_dir / name, data)
            results = update_results(results_path, name, row)
    results = add_significance(add_comparisons(results), runs_dir, data)
    from ume.expdir import atomic_write_json

    atomic_write_json(results, results_path)
    (work / "results.md").write_text(format_results(results) + "\n", encoding="utf-8")
    plot_curves(results, work / "dev_mer_curves.png")
    if (runs_dir / "ume" / MODEL_FILE).is_file():
        from ume.inspect import inspect_experiment

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
    )
    print(format_results(results))
    return 0
