"""Making a run from its recipe (ume/experiment/recipe.py): the upcycling and training calls,
each recorded in its dir (fingerprint.py) so a finished run is reused only by the recipe and
start model that made it. A run is one complete experiment dir WORKDIR/runs/<run>/; a
finished run is skipped, an interrupted one resumes.

Example:
    >>> run_one("ume", load_plan("quick"), "quick", Path("work"), Path("work/runs/dense"))
"""

from __future__ import annotations

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
    weights_identity,
)
from ume.experiment.plan import ExperimentPlan
from ume.experiment.recipe import UPCYCLED_FFNS, Recipe, UpcycleOptions, resolve_run

log = logging.getLogger(__name__)


def _finished(run_dir: Path) -> bool:
    return (run_dir / MODEL_FILE).is_file() and (run_dir / "train_info.json").is_file()


def _continue_overrides(
    plan: ExperimentPlan, steps: int | None = None, seed: int | None = None
) -> list[str]:
    """Train overrides of every run that continues a trained model: the plan's extra steps
    (or `steps`), lr, schedule and evaluation, the plan's seed (or `seed`; 0 = the config's).
    The from-scratch warm-up curriculum (shortest-first first epoch, no SpecAugment or chunk
    training for curriculum_steps) is switched off: on a converged model it is a distribution
    shift that undoes the dense model's progress for the first steps."""
    steps = plan.extra_steps if steps is None else steps
    seed = plan.seed if seed is None else seed
    return [
        "train.sortagrad=false",
        "train.curriculum_steps=0",
        f"train.max_steps={steps}",
        f"train.max_minutes={plan.extra_minutes}",
        f"train.lr={plan.lr}",
        f"train.warmup_steps={plan.warmup_steps}",
        f"train.lr_schedule={plan.lr_schedule}",
        f"train.eval_every={plan.eval_every}",
        f"train.eval_max_utts={plan.eval_max_utts}",
        f"train.checkpoint_every={plan.eval_every}",
        *([f"train.seed={seed}"] if seed else []),
    ]


def _forms(recipe: dict, key: str, start: Path | None, alternatives: dict) -> list[dict]:
    """The older forms of `recipe` a run made before may have recorded: its start model (at
    `key`) named by its recorded fingerprint instead of its weights, times each alternative
    value of the other fields (`alternatives`: field -> older value)."""
    starts = [recipe[key]]
    if start is not None and model_fingerprint(start) != recipe[key]:
        starts.append(model_fingerprint(start))
    variants = [{}] + [{k: v} for k, v in alternatives.items() if v != recipe.get(k)]
    forms = [dict(recipe, **{key: s}, **v) for s in starts for v in variants]
    return [f for f in forms if f != recipe]


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
        "init": weights_identity(init) if init else None,
        "phases": phases,
    }
    # recorded before: the config hashed as file bytes; the start model named by its record
    legacy = _forms(recipe, "init", init, {"config": file_sha256(config)})
    start_weights = recipe["init"]
    check_or_record(run_dir, recipe, legacy=legacy, start_weights=start_weights)
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


def upcycle_args(up: UpcycleOptions, plan: ExperimentPlan, data: Path, seed: int) -> dict:
    """`upcycle_experiment`'s arguments for a recipe's upcycle options: the plan's MoE where
    an option is left out, the symmetry breakers only where set, k-means routers clustering
    the workdir's training set unless router_data says otherwise."""

    def pick(value, default):  # noqa: ANN001, ANN202
        return default if value is None else value

    experts = pick(up.experts, plan.experts * (up.groups or 1))
    args = dict(
        experts=experts,
        top_k=pick(up.top_k, plan.top_k),
        slots=list(pick(up.slots, plan.slots)),
        layers=pick(up.layers, plan.layers),
        drop_ratio=pick(up.drop_ratio, 0.0),
        router_init=pick(up.router_init, plan.router_init),
        balance_coef=pick(up.balance_coef, plan.balance_coef),
        z_loss_coef=pick(up.z_loss_coef, plan.z_loss_coef),
    )
    if seed:  # only when set: a recipe recorded before `seed` existed stays the same
        args["seed"] = seed
    for key in ("noise_std", "noise_frac", "router_noise", "groups"):
        if getattr(up, key) is not None:
            args[key] = getattr(up, key)
    if args["router_init"] == "kmeans":
        args["router_data"] = up.router_data or str(data / "train")
        args["router_utts"] = pick(up.router_utts, plan.router_utts)
    elif up.router_data is not None or up.router_utts is not None:
        raise ConfigError("router_data / router_utts are only used by router_init: kmeans")
    return args


def _upcycled(dense: Path, out: Path, args: dict) -> Path:
    from ume.upcycle import upcycle_experiment

    recipe = upcycle_recipe(weights_identity(dense), out, args)
    # recorded before: router_data as given (not workdir-relative); the dense model named by
    # its record
    legacy = _forms(recipe, "dense", dense, {"router_data": args.get("router_data")})
    done = (out / MODEL_FILE).is_file()
    check_or_record(out, recipe, has_output=done, legacy=legacy, start_weights=recipe["dense"])
    if not done:
        upcycle_experiment(dense, out, overwrite=True, **args)
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


def _start_dir(recipe: Recipe, runs: Path, dense: Path) -> Path | None:
    """The trained model a run starts from (None: from scratch)."""
    if recipe.start == "scratch":
        return None
    if recipe.start == "dense":
        return dense
    base = runs / recipe.start.removeprefix("run:")
    if not _finished(base):
        raise ConfigError(
            f"{recipe.name} continues {base}, which is not a finished run: run "
            f"{base.name} first (list it before {recipe.name} in --runs), or --merge-from the "
            "workdir that has it"
        )
    return base


def run_one(
    name: str,
    plan: ExperimentPlan,
    preset: str,
    work: Path,
    dense: Path,
    user: dict[str, Path] | None = None,
) -> None:
    """Make (or resume, or reuse) run `name` of the workdir: its recipe (shipped, composed
    with modifiers, or a --recipe file in `user`) resolved against `plan`."""
    recipe = resolve_run(name, plan, user)
    if recipe.start == "given":
        raise ConfigError(f"{name} is the starting model itself: nothing to train")
    data, runs = work / "data", work / "runs"
    start = _start_dir(recipe, runs, dense)
    phases = None if recipe.phases is None else [p.as_dict() for p in recipe.phases]
    if start is None:  # from scratch: the plan's model config and the recipe's overrides
        ov = list(recipe.overrides)
        ov += [f"train.max_steps={recipe.steps}"] if recipe.steps is not None else []
        ov += [f"train.seed={recipe.seed}"] if recipe.seed else []
        _train(runs / name, data, preset_config(plan.model_config), ov, None, phases)
        return
    ov = _continue_overrides(plan, recipe.steps, recipe.seed)
    if recipe.upcycle is not None:
        seed = plan.seed if recipe.seed is None else recipe.seed
        args = upcycle_args(recipe.upcycle, plan, data, seed)
        start = _upcycled(start, runs / (recipe.init_dir or f"_init_{name}"), args)
        ov.append(f"model.moe.jitter={plan.jitter}")
    if phases and any(p["trainable"] == UPCYCLED_FFNS for p in phases):
        ffns = dense_ffn_prefixes(plan, load_config(start / "config.yaml"))
        phases = [dict(p, trainable=ffns) if p["trainable"] == UPCYCLED_FFNS else p for p in phases]
    _train(runs / name, data, start / "config.yaml", ov + recipe.overrides, start, phases)
