"""The experiment's plan: the strict per-preset settings (configs/experiment_<preset>.yaml)
that every run's recipe (ume/recipes/NAME.yaml) refers to as ${plan.KEY}.

Example:
    >>> plan = load_plan("quick")
    >>> plan.runs, plan.experts, plan.top_k
    >>> load_plan("small_6k", ["fast_lr_scale_no_freeze=6"]).fast_lr_scale_no_freeze  # 6.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ume.bundled import DEMO, MODELS_DIR
from ume.config import apply_override, from_dict, preset_config

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BUNDLED = MODELS_DIR / DEMO  # package data (ume.bundled_model(DEMO))


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
    # symmetry breakers, each used by its own recipe (ume_noise, ...) and all together (except
    # Drop-Upcycling) by ume_all; the plain `ume` run uses none of them
    noise_upcycling: float = 0.1  # ume_noise: noise std, x each weight tensor's std
    noise_frac: float = 0.25  # ... on this fraction of each expert's hidden units
    drop_small: float = 0.15  # ume_drop_small: Drop-Upcycling ratio
    fast_lr_scale: float = 5.0  # ume_fast: expert/router lr multiplier in phase 1 (frozen rest)
    fast_lr_scale_phase2: float = 1.0  # ... and in phase 2
    # ume_kmeans_fast_no_freeze: expert/router lr multiplier of its single (unfrozen) phase;
    # lower than phase 1's 5x because here the backbone learns too and can be damaged
    fast_lr_scale_no_freeze: float = 3.0
    router_noise: float = 0.3  # ume_router_noise: std of the router-logit noise in training
    router_utts: int = 200  # ume_kmeans*: training utterances the k-means routers cluster
    fine_groups: int = 2  # ume_fine: G slices per FFN; experts x G experts of d_ff/G, top_k per
    # group, so total and active parameters equal ume's
    wide_d_ff: int = 0  # dense_wide's encoder d_ff; 0 = experts x the dense d_ff (MoE's total)
    scratch_steps: int = 0  # 0 = same budget as the dense preset's max_steps
    scratch_minutes: float = 0.0
    eval_every: int = 100
    eval_max_utts: int = 200
    corpus: str = ""  # synthetic corpus preset (`ume data synth`); "" = the experiment's name
    model_config: str = ""  # config preset of from-scratch runs; "" = the experiment's name
    bundled_dense: bool = True  # False: the corpus differs from the bundled model's
    # a repeat of the same recipe with other randomness (how much of a difference is training
    # noise?): seeds the upcycling (k-means, Drop-Upcycling, noise) and the continued
    # runs' training (data order, augmentation); 0 = upcycle seed 0, the model config's seed
    seed: int = 0


def load_plan(preset: str, overrides: list[str] | None = None) -> ExperimentPlan:
    """The preset's strict plan, then `key=value` overrides (`ume experiment --set`; value
    parsed as YAML). A misspelt key is an error, like one in the preset file."""
    import yaml

    path = preset_config(f"experiment_{preset}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for ov in overrides or []:
        apply_override(data, ov)
    where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    plan = from_dict(ExperimentPlan, data, where=where)
    plan.corpus = plan.corpus or preset
    plan.model_config = plan.model_config or preset
    check_runs(plan.runs, where)
    return plan


def check_runs(names: list[str], where: str, user: dict[str, Path] | None = None) -> None:
    """Refuse a run name that is no recipe: a shipped or --recipe (`user`) one, optionally
    with distinct known "+MOD" modifiers when it upcycles."""
    from ume.experiment.recipe import modifiers, raw_recipe, unknown_run_error

    for name in names:
        base, *mods = name.split("+")
        raw = raw_recipe(base, user)
        ok = raw is not None
        if ok and mods:
            known = len(set(mods)) == len(mods) and set(mods) <= set(modifiers())
            ok = known and raw.get("upcycle") is not None
        if not ok:
            raise unknown_run_error(name, where, user or {})
