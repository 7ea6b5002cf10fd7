"""Recipes: how each run of the experiment is made (which starting model, which overrides,
which freezing phases), and the training/upcycling calls that make it. A run is one complete
experiment dir WORKDIR/runs/<run>/; a finished run is skipped, an interrupted one resumes.

Example:
    >>> run_one("ume", load_plan("quick"), "quick", Path("work"), Path("work/runs/dense"))
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ume.config import ConfigError, ExperimentConfig, load_config, preset_config
from ume.expdir import MODEL_FILE
from ume.experiment.fingerprint import (
    check_or_record,
    config_sha256,
    file_sha256,
    model_fingerprint,
)
from ume.experiment.plan import (
    BREAKER_RUNS,
    CONTINUES_SCRATCH,
    ExperimentPlan,
    is_modified_breaker,
    split_run,
)

log = logging.getLogger(__name__)


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
        *([f"train.seed={plan.seed}"] if plan.seed else []),
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

    recipe = {
        "kind": "train",
        "config": config_sha256(config),
        "overrides": list(overrides),
        "init": model_fingerprint(init) if init else None,
        "phases": phases,
    }
    legacy = dict(recipe, config=file_sha256(config))  # recorded before config_sha256
    check_or_record(run_dir, recipe, legacy=legacy)  # another plan's run is refused, not reused
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


def upcycle_recipe(dense_fingerprint: str | None, out: Path, args: dict) -> dict:
    """The recipe of an _init_* dir. A router_data path inside the workdir (out's grandparent)
    is recorded relative to it, so the same run made in another workdir (`--merge-from`) has
    the same recipe."""
    rec = {"kind": "upcycle", "dense": dense_fingerprint, **args}
    if rec.get("router_data") is not None:
        # lexical absolute paths: a workdir's data/ is often a symlink to a shared corpus, and
        # resolving it would put the data outside every workdir
        work = Path(os.path.abspath(Path(out).parent.parent))
        data = Path(os.path.abspath(rec["router_data"]))
        if data.is_relative_to(work):
            rec["router_data"] = "<workdir>/" + data.relative_to(work).as_posix()
    return rec


def _upcycled(plan: ExperimentPlan, dense: Path, out: Path, **kw) -> Path:
    from ume.upcycle import upcycle_experiment

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
    if plan.seed:  # only when set: a recipe recorded before `seed` existed stays the same
        args["seed"] = plan.seed
    args.update(kw)
    dense_fp = model_fingerprint(dense)
    recipe = upcycle_recipe(dense_fp, out, args)
    legacy = {"kind": "upcycle", "dense": dense_fp, **args}  # router_data as given: before the
    # workdir-relative form, an _init_* dir recorded the path it was passed
    done = (out / MODEL_FILE).is_file()
    check_or_record(out, recipe, has_output=done, legacy=legacy)  # refuses another plan's dir
    if not done:
        upcycle_experiment(dense, out, overwrite=True, **args)
    return out


def breaker_recipe(
    name: str, plan: ExperimentPlan, two_phase: list[dict], router_data: Path | None = None
) -> tuple[dict, list[dict]]:
    """Upcycling arguments and freezing phases of a symmetry-breaker run (issue 13): the ume
    recipe plus one breaker (ume_all: every breaker but Drop-Upcycling and k-means routers;
    ume_kmeans_fast: k-means routers + the fast phase-1 learning rate; ume_kmeans_no_freeze:
    k-means routers without the freezing phase; ume_kmeans_drop_no_freeze: the same plus
    Drop-Upcycling at drop_small; ume_kmeans_fast_no_freeze: one unfrozen phase whose experts
    and routers learn fast_lr_scale_no_freeze x faster; ume_kmeans_top1_no_freeze: the no-freeze
    recipe with top-1 routing in every other block, the shape whose batch-1 RTF was 1.10x
    dense; ume_kmeans_top1_fast_no_freeze: that shape at the fast recipe's lr). router_data: the
    utterances k-means routers cluster (the training set)."""
    every = name == "ume_all"
    up: dict = {}
    phases = [dict(p) for p in two_phase]
    if name == "ume_noise" or every:
        up.update(breaker_args("noise", plan))
    if name in ("ume_drop_small", "ume_kmeans_drop_no_freeze"):
        up.update(breaker_args("drop", plan))
    if name.startswith("ume_kmeans"):
        if router_data is None:
            raise ConfigError(f"{name}: k-means routers need the training data dir")
        up.update(router_init="kmeans", router_data=str(router_data), router_utts=plan.router_utts)
    if name.endswith("_no_freeze"):
        phases = []
    if name.endswith("_fast_no_freeze"):  # updates drive copies apart: make them larger
        phases = [{"steps": 0, "trainable": "all", "moe_lr_scale": plan.fast_lr_scale_no_freeze}]
    if name.startswith("ume_kmeans_top1"):
        up.update(top_k=1, layers="every_other")
    if name in ("ume_fast", "ume_kmeans_fast") or every:
        phases[0]["moe_lr_scale"] = plan.fast_lr_scale
        phases[1]["moe_lr_scale"] = plan.fast_lr_scale_phase2
    if name == "ume_router_noise" or every:
        up.update(breaker_args("router_noise", plan))
    if name == "ume_fine" or every:
        up.update(breaker_args("fine", plan))
    return up, phases


def breaker_args(breaker: str, plan: ExperimentPlan) -> dict:
    """Upcycling arguments of one symmetry breaker (a BREAKER_MODIFIERS name) at the plan's
    value: what both the breaker runs and a "+breaker" modifier add."""
    return {
        "drop": {"drop_ratio": plan.drop_small},
        "noise": {"noise_std": plan.noise_upcycling, "noise_frac": plan.noise_frac},
        "router_noise": {"router_noise": plan.router_noise},
        "fine": {"groups": plan.fine_groups, "experts": plan.experts * plan.fine_groups},
    }[breaker]


def modifier_args(name: str, plan: ExperimentPlan, up: dict) -> dict:
    """The upcycling arguments of a modified breaker run ("BASE+MOD+..."): the base recipe's
    `up` plus one symmetry breaker per modifier, at the plan's value for it. A modifier that
    would change what the base recipe already sets is refused (say it once, in the base).

    Example:
        >>> modifier_args("ume_kmeans_fast_no_freeze+drop", load_plan("small_6k"), {})
        {'drop_ratio': 0.15}
    """
    _, mods = split_run(name)
    out = dict(up)
    for mod in mods:
        add = breaker_args(mod, plan)
        clash = sorted(k for k in add if k in out)
        if clash:
            raise ConfigError(f"run {name!r}: +{mod} sets {clash}, which its recipe already sets")
        out.update(add)
    return out


def dense_ffn_prefixes(plan: ExperimentPlan, cfg: ExperimentConfig) -> list[str]:
    """Parameter-name prefixes of the dense FFNs that UME's plan turns into MoE layers (its
    slots and layers): phase 1 of dense_continued_frozen trains exactly these. Read off the
    MoE model the plan describes (built on the meta device: names only, no memory)."""
    import copy

    import torch

    from ume.model.asr import ASRModel
    from ume.model.params import moe_layers

    model_cfg = copy.deepcopy(cfg.model)
    moe = model_cfg.moe
    moe.num_experts, moe.top_k = plan.experts, plan.top_k
    moe.slots, moe.layers = list(plan.slots), plan.layers
    with torch.device("meta"):
        names = list(moe_layers(ASRModel(model_cfg, 2)))
    if not names:
        raise ConfigError(f"slots {plan.slots} / layers {plan.layers!r} select no dense FFN")
    return [n + "." for n in names]


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
    elif name == "dense_continued_frozen":
        ffns = dense_ffn_prefixes(plan, load_config(dense / "config.yaml"))
        frozen = [{"steps": plan.freeze_steps, "trainable": ffns}, two_phase[1]]
        _train(run_dir, data, dense / "config.yaml", ov, dense, frozen)
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
    elif name in BREAKER_RUNS or is_modified_breaker(name):
        up, phases = breaker_recipe(split_run(name)[0], plan, two_phase, data / "train")
        up = modifier_args(name, plan, up)
        init = _upcycled(plan, dense, runs / f"_init_{name}", **up)
        _train(run_dir, data, init / "config.yaml", ov + jitter, init, phases)
    elif name in CONTINUES_SCRATCH:  # a capacity control trained as long as dense_continued
        base = runs / CONTINUES_SCRATCH[name]
        if not _finished(base):
            raise ConfigError(
                f"{name} continues {base}, which is not a finished run: run "
                f"{base.name} first (list it before {name} in --runs), or --merge-from the "
                "workdir that has it"
            )
        _train(run_dir, data, base / "config.yaml", ov, base)
    elif name == "dense_wide":  # capacity control: the MoE's total FFN size, dense, from scratch
        cfg = load_config(preset_config(plan.model_config))
        wide = plan.wide_d_ff or plan.experts * cfg.model.encoder.d_ff
        wide_ov = [f"model.encoder.d_ff={wide}"]
        _train(run_dir, data, preset_config(plan.model_config), wide_ov, None)
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
