"""Is system B really better than system A? Paired bootstrap over utterances (Koehn 2004;
Bisani & Ney 2004 for ASR).

Both systems decode the same test utterances. Each bootstrap replicate draws utterances with
replacement, sums errors and reference units for A and B over the same draw, and records the
relative MER change of B against A. The 2.5/97.5 percentiles give a 95% confidence interval;
`p_b_better` is the share of replicates in which B makes fewer errors than A. On a test set of a
few hundred utterances a 1% relative difference is well inside the noise; this says how far inside.

Example:
    >>> refs = {"u1": "你好", "u2": "HELLO WORLD"}
    >>> res = paired_bootstrap(refs, {"u1": "你", "u2": "HELLO"}, refs, replicates=200)
    >>> res["mer_a"], res["mer_b"], res["p_b_better"]
    (50.0, 0.0, 1.0)

    $ ume score --ref data/test/text --hyp runs/ume/hyp_test.txt --vs runs/dense/hyp_test.txt
"""

from __future__ import annotations

import numpy as np

from ume.data.manifest import DataError
from ume.decode.metrics import utterance_errors
from ume.errors import UmeError

__all__ = [
    "bootstrap_errors",
    "format_bootstrap",
    "format_seed_bootstrap",
    "paired_bootstrap",
    "seed_bootstrap_errors",
    "utterance_errors",
]


def paired_bootstrap(
    refs: dict[str, str],
    hyps_a: dict[str, str],
    hyps_b: dict[str, str],
    replicates: int = 1000,
    seed: int = 0,
) -> dict:
    """Compare B against A on the same references. Returns mer_a, mer_b (percent),
    rel_change_pct (100·(B−A)/A, negative = B better), its 95% interval rel_ci95_pct [lo, hi],
    p_b_better (share of replicates where B has fewer errors), replicates and num_utts."""
    if not refs:
        raise DataError("paired_bootstrap: no reference utterances given")
    keys = sorted(refs)
    a = utterance_errors(refs, hyps_a, keys)  # (N, 2)
    return bootstrap_errors(a, utterance_errors(refs, hyps_b, keys), replicates, seed)


def bootstrap_errors(a: np.ndarray, b: np.ndarray, replicates: int = 1000, seed: int = 0) -> dict:
    """:func:`paired_bootstrap` on per-utterance counts from :func:`utterance_errors` (same
    keys, same order), for callers that compare several systems against one baseline."""
    res = seed_bootstrap_errors([a], [b], replicates, seed)
    keys = ("mer_a", "mer_b", "rel_change_pct", "rel_ci95_pct", "p_b_better")
    return {**{k: res[k] for k in keys}, "replicates": replicates, "num_utts": len(a)}


def format_bootstrap(res: dict, name_a: str = "A", name_b: str = "B") -> str:
    """One human-readable paragraph of a :func:`paired_bootstrap` result."""
    lo, hi = res["rel_ci95_pct"]
    return (
        f"MER {name_a} {res['mer_a']:.2f}%  {name_b} {res['mer_b']:.2f}%  "
        f"relative change {res['rel_change_pct']:+.2f}% (95% CI {lo:+.2f}% .. {hi:+.2f}%, "
        f"paired bootstrap, {res['replicates']} replicates of {res['num_utts']} utterances); "
        f"{name_b} better in {100 * res['p_b_better']:.1f}% of replicates"
    )


def seed_bootstrap_errors(
    a_runs: list[np.ndarray], b_runs: list[np.ndarray], replicates: int = 1000, seed: int = 0
) -> dict:
    """Compare B against A when each was trained more than once (different seeds), so that the
    interval covers the training-run spread as well as the choice of test utterances.

    a_runs / b_runs: per-utterance counts from :func:`utterance_errors`, one (N, 2) array per
    training run, all over the same keys in the same order. Each replicate draws utterances with
    replacement (the same draw for both systems) and one run of A and one of B at random
    (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks").
    Returns mer_a / mer_b (the mean over runs, percent), mer_a_runs / mer_b_runs, rel_change_pct
    of the means, rel_ci95_pct, p_b_better, run_pairs_rel_pct ([min, max] of the relative change
    over every (A run, B run) pair on the full test set), replicates, num_utts and num_runs
    [len(a_runs), len(b_runs)]. With one run each it is :func:`bootstrap_errors`.
    """
    if not a_runs or not b_runs:
        raise UmeError("seed_bootstrap_errors: each system needs at least one run")
    if replicates < 1:
        raise UmeError(f"replicates must be >= 1, got {replicates}")
    n = len(a_runs[0])
    if any(len(r) != n for r in (*a_runs, *b_runs)):
        raise UmeError("seed_bootstrap_errors: all runs must be scored on the same utterances")
    a, b = np.stack(a_runs), np.stack(b_runs)  # (Ka, N, 2), (Kb, N, 2)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(replicates, n))  # (R, N)
    pick_a = rng.integers(0, len(a), size=replicates)  # (R,)
    pick_b = rng.integers(0, len(b), size=replicates)
    err_a = np.take_along_axis(a[:, :, 0][pick_a], idx, 1).sum(1)  # (R,)
    err_b = np.take_along_axis(b[:, :, 0][pick_b], idx, 1).sum(1)
    ref_len = np.maximum(a[0, :, 1][idx].sum(1), 1)  # (R,)
    mer_a, mer_b = 100.0 * err_a / ref_len, 100.0 * err_b / ref_len
    rel = 100.0 * (mer_b - mer_a) / np.maximum(mer_a, 1e-9)
    total_ref = max(int(a[0, :, 1].sum()), 1)
    runs_a = 100.0 * a[:, :, 0].sum(1) / total_ref  # (Ka,)
    runs_b = 100.0 * b[:, :, 0].sum(1) / total_ref  # (Kb,)
    mean_a, mean_b = float(runs_a.mean()), float(runs_b.mean())
    pairs = 100.0 * (runs_b[None, :] - runs_a[:, None]) / np.maximum(runs_a[:, None], 1e-9)
    return {
        "mer_a": round(mean_a, 4),
        "mer_b": round(mean_b, 4),
        "mer_a_runs": [round(float(x), 4) for x in runs_a],
        "mer_b_runs": [round(float(x), 4) for x in runs_b],
        "rel_change_pct": round(100.0 * (mean_b - mean_a) / max(mean_a, 1e-9), 3),
        "rel_ci95_pct": [round(float(x), 3) for x in np.percentile(rel, [2.5, 97.5])],
        "p_b_better": round(float((err_b < err_a).mean()), 4),
        "run_pairs_rel_pct": [round(float(pairs.min()), 3), round(float(pairs.max()), 3)],
        "replicates": replicates,
        "num_utts": n,
        "num_runs": [len(a), len(b)],
    }


def format_seed_bootstrap(res: dict, name_a: str = "A", name_b: str = "B") -> str:
    """One human-readable paragraph of a :func:`seed_bootstrap_errors` result."""
    lo, hi = res["rel_ci95_pct"]
    p_lo, p_hi = res["run_pairs_rel_pct"]
    ka, kb = res["num_runs"]
    runs_a = ", ".join(f"{x:.2f}" for x in res["mer_a_runs"])
    runs_b = ", ".join(f"{x:.2f}" for x in res["mer_b_runs"])
    return (
        f"mean MER {name_a} {res['mer_a']:.2f}% ({ka} run{'s' * (ka != 1)}: {runs_a})  {name_b} "
        f"{res['mer_b']:.2f}% ({kb} run{'s' * (kb != 1)}: {runs_b})  relative change {res['rel_change_pct']:+.2f}% "
        f"(95% CI {lo:+.2f}% .. {hi:+.2f}%, bootstrap over {res['num_utts']} utterances and the "
        f"runs, {res['replicates']} replicates); every run pair: {p_lo:+.2f}% .. {p_hi:+.2f}%; "
        f"{name_b} better in {100 * res['p_b_better']:.1f}% of replicates"
    )
