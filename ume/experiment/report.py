"""Results of the experiment beyond each run's own scores: relative change against dense,
minutes to reach dev targets, paired-bootstrap significance against dense, and the dev-MER
curves plot.

Example:
    >>> results = add_significance(add_comparisons(results), work / "runs", work / "data")
    >>> plot_curves(results, work / "dev_mer_curves.png")
"""

from __future__ import annotations

import json
from pathlib import Path

from ume.experiment.recipe import run_start


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


def add_significance(results: dict, runs_dir: Path, data: Path, replicates: int = 1000) -> dict:
    """Paired bootstraps (same utterances) of each run's hypotheses: against the dense run on
    test (rel_ci95_vs_dense_pct, p_better_than_dense) and, for every run that is not dense or
    dense_continued, against dense_continued (the same extra steps without experts) on test and
    on every generalisation split (rel_ci95_vs_dense_continued_pct / _heldout_pct /
    _heldout_synth_pct / _heldout_text_pct, rel_change_...,
    p_better_than_dense_continued). The interval is of the relative MER change, in percent."""
    from ume.experiment.evaluate import GENERALISATION_SPLITS

    for split, suffix in (("test", ""), *GENERALISATION_SPLITS):
        ref_path = data / split / "text"
        if not ref_path.is_file():
            continue
        hyp_name = "hyp_test.txt" if split == "test" else f"hyp{suffix}.txt"
        for base_name in ("dense", "dense_continued"):
            if base_name == "dense" and suffix:
                continue  # vs dense on test only, as before
            _compare_to(results, runs_dir, ref_path, hyp_name, base_name, suffix, replicates)
    return results


def _compare_to(
    results: dict,
    runs_dir: Path,
    ref_path: Path,
    hyp_name: str,
    base_name: str,
    suffix: str,
    replicates: int,
) -> None:
    from ume.data.manifest import read_text_file
    from ume.decode.significance import bootstrap_errors, utterance_errors

    base_hyp = runs_dir / base_name / hyp_name
    if not base_hyp.is_file():
        return
    refs = read_text_file(ref_path)
    keys = sorted(refs)
    base = utterance_errors(refs, read_text_file(base_hyp), keys)  # (N, 2), once for all runs
    for name, row in results.get("runs", {}).items():
        hyp = runs_dir / name / hyp_name
        if name in ("dense", base_name) or not hyp.is_file():
            continue
        res = bootstrap_errors(base, utterance_errors(refs, read_text_file(hyp), keys), replicates)
        row[f"rel_ci95_vs_{base_name}{suffix}_pct"] = res["rel_ci95_pct"]
        if base_name == "dense":
            row["p_better_than_dense"] = res["p_b_better"]
        else:
            row[f"rel_change_vs_{base_name}{suffix}_pct"] = res["rel_change_pct"]
            row[f"p_better_than_{base_name}{suffix}"] = res["p_b_better"]


def plot_curves(results: dict, path: Path) -> None:
    """Dev MER vs wall-clock, two panels: each run's own training minutes (the dense model as a
    sunk cost, as the paper counts), and cumulative minutes, where runs that start from the dense
    model are shifted right by its training time (the cost of dense + UME together), and a
    continued capacity control by its from-scratch run's."""
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
            shift = 0.0
            start = row.get("start") or run_start(name) or "scratch"
            if cumulative and start == "dense":
                shift = offset
            elif cumulative and start.startswith("run:"):
                base = results["runs"].get(start.removeprefix("run:"), {})
                shift = (base.get("train_seconds") or 0.0) / 60
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
