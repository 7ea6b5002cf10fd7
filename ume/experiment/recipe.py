"""A run of `ume experiment` as data: a small YAML recipe (start model, upcycling options,
freezing phases, lr scales, steps, seed), loaded strictly into `Recipe`.

The shipped runs are files in ume/recipes/NAME.yaml (the run is called NAME); a user passes
their own with `ume experiment --recipe FILE`. A value written `${plan.KEY}` is the preset's
plan value (configs/experiment_PRESET.yaml, changed by `--set`), so one recipe serves every
preset; inside a longer string (an override) it is substituted as text (lists as JSON).

A run name may add modifiers: "BASE+MOD+..." is recipe BASE plus the `upcycle:` options of
each ume/recipes/modifiers/MOD.yaml (each once; BASE must upcycle; a modifier may not set an
option BASE already sets). The composed run upcycles into its own dir, `_init_BASE+MOD...`.

Example:
    >>> plan = load_plan("small_6k")
    >>> r = resolve_run("ume_kmeans_fast_no_freeze+drop", plan)
    >>> r.upcycle.router_init, r.upcycle.drop_ratio, r.phases[0].moe_lr_scale
    ('kmeans', 0.15, 3.0)
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ume.config import ConfigError, from_dict, load_config, preset_config

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
MODIFIER_DIR = RECIPE_DIR / "modifiers"
# phase value: the dense FFNs the plan's MoE shape (slots, layers) turns into MoE layers
UPCYCLED_FFNS = "upcycled_ffns"
_REF = re.compile(r"\$\{plan\.(\w+)\}")


@dataclass
class UpcycleOptions:
    """How the start model becomes an MoE (`ume upcycle`'s options). An option left out takes
    the plan's value (experts, top_k, slots, layers, router_init, balance_coef, z_loss_coef)
    or is not used (the symmetry breakers); experts defaults to the plan's x groups, so fine
    experts keep the total and active parameters."""

    experts: int | None = None
    top_k: int | None = None  # experts per token (per group when groups > 1)
    slots: list[str] | None = None  # encoder_macaron, encoder_ffn, decoder_ffn
    layers: str | None = None  # "all", "every_other" or a comma list of block indices
    router_init: str | None = None  # normal | zeros | kmeans
    balance_coef: float | None = None
    z_loss_coef: float | None = None
    drop_ratio: float | None = None  # Drop-Upcycling: fraction of expert units re-initialised
    noise_std: float | None = None  # noise upcycling: std, x each weight tensor's std
    noise_frac: float | None = None  # ... on this fraction of each expert's hidden units
    router_noise: float | None = None  # std of router-logit noise in training
    groups: int | None = None  # fine experts: each FFN cut into G slices
    router_data: str | None = None  # kmeans: utterances to cluster (default: the training set)
    router_utts: int | None = None  # kmeans: how many (default: the plan's router_utts)


@dataclass
class Phase:
    """One freezing phase: `steps` (0 = to the end) training `trainable` ("all", "moe",
    "router", "top:N", a list of parameter-name prefixes, or "upcycled_ffns"), experts and
    routers at moe_lr_scale x the lr (left out: 1)."""

    steps: int = 0
    trainable: Any = "all"
    moe_lr_scale: float | None = None

    def as_dict(self) -> dict:
        d = {"steps": self.steps, "trainable": self.trainable}
        if self.moe_lr_scale is not None:
            d["moe_lr_scale"] = self.moe_lr_scale
        return d


@dataclass
class Recipe:
    """One run. start: "dense" (continue the workdir's dense model), "scratch" (the plan's
    model config from random weights), "run:NAME" (continue the workdir's finished run NAME),
    or "given" (the `dense` run only: the starting model itself). A continued run trains the
    plan's extra_steps at its lr and schedule; `steps`/`seed` replace the plan's values.
    upcycle: make an MoE of the start model first ({} = the plan's MoE). phases: left out =
    the start config's own; [] = one phase, everything trainable. overrides: config
    `key=value` changes applied after the run's own."""

    description: str = ""
    start: str = "dense"
    upcycle: UpcycleOptions | None = None
    init_dir: str = ""  # the upcycled model's dir under runs/ ("" = _init_<run name>)
    phases: list[Phase] | None = None
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None
    seed: int | None = None
    name: str = ""  # the run's name ("" = the file's stem)

    def to_yaml(self) -> str:
        """This recipe as a file `load_recipe` reads back equal (values resolved)."""
        data = dataclasses.asdict(self)
        if self.upcycle is not None:
            data["upcycle"] = {k: v for k, v in data["upcycle"].items() if v is not None}
        if self.phases is not None:
            data["phases"] = [p.as_dict() for p in self.phases]
        defaults = dataclasses.asdict(Recipe())
        keep = {k: v for k, v in data.items() if k in ("start", "upcycle") or v != defaults[k]}
        return yaml.safe_dump(keep, sort_keys=False, allow_unicode=True)


def _unwrap(tp: Any) -> Any:
    """X | None -> X."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def _checked(cls: type, data: Any, where: str) -> dict:
    """The given keys of `data` for dataclass `cls`, each converted to its field's type (for
    `X | None`: an X; a None value counts as not given). Unknown keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    plain = dataclasses.make_dataclass(
        cls.__name__,
        [(f.name, _unwrap(hints[f.name]), field(default=None)) for f in dataclasses.fields(cls)],
    )
    given = {k: v for k, v in data.items() if v is not None}
    checked = from_dict(plain, given, where)
    return {k: getattr(checked, k) for k in given}


def plan_value(plan: Any, key: str, where: str) -> Any:
    """The plan's value of `key`; the keys whose 0 means "derived" are derived here:
    scratch_steps (0 = the model config's max_steps) and wide_d_ff (0 = experts x the model
    config's encoder d_ff, the MoE's total FFN size)."""
    if not hasattr(plan, key):
        known = [f.name for f in dataclasses.fields(plan)]
        raise ConfigError(f"{where}: ${{plan.{key}}} is not a plan key; plan keys: {known}")
    value = getattr(plan, key)
    if key == "scratch_steps" and not value:
        value = load_config(preset_config(plan.model_config)).train.max_steps
    if key == "wide_d_ff" and not value:
        d_ff = load_config(preset_config(plan.model_config)).model.encoder.d_ff
        value = plan.experts * d_ff
    return value


def _interpolate(node: Any, plan: Any, where: str) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, plan, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, plan, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _REF.fullmatch(node)
    if whole:
        return plan_value(plan, whole.group(1), where)

    def text(m: re.Match) -> str:
        v = plan_value(plan, m.group(1), where)
        return json.dumps(v) if isinstance(v, list | dict) else str(v)

    out = _REF.sub(text, node)
    if "${" in out:
        raise ConfigError(f"{where}: {node!r}: only ${{plan.KEY}} references are understood")
    return out


def _check(recipe: Recipe, where: str) -> Recipe:
    start = recipe.start
    if start not in ("dense", "scratch", "given") and not (start.startswith("run:") and start[4:]):
        raise ConfigError(
            f"{where}: start {start!r}: use dense, scratch, given or run:NAME "
            "(a finished run of the same workdir)"
        )
    bare = Recipe(start="given", description=recipe.description, name=recipe.name)
    if start == "given" and recipe != bare:
        raise ConfigError(f"{where}: start: given (the starting model itself) takes no options")
    if start == "scratch" and recipe.upcycle is not None:
        raise ConfigError(f"{where}: upcycle needs a trained start model, not start: scratch")
    for ov in recipe.overrides:
        if "=" not in ov:
            raise ConfigError(f"{where}: override {ov!r} must look like section.key=value")
    for i, p in enumerate(recipe.phases or []):
        t = p.trainable
        if not (isinstance(t, str) or (isinstance(t, list) and all(isinstance(s, str) for s in t))):
            raise ConfigError(f"{where}.phases[{i}].trainable: a name or a list of prefixes")
    return recipe


def parse_recipe(data: Any, plan: Any, where: str, name: str) -> Recipe:
    """A Recipe from a parsed YAML mapping: plan references resolved, every key checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of recipe keys, got {data!r}")
    data = _interpolate(data, plan, where)
    up = data.pop("upcycle", None)
    phases = data.pop("phases", None)
    recipe = Recipe(**_checked(Recipe, data, where))
    if up is not None:
        recipe.upcycle = UpcycleOptions(**_checked(UpcycleOptions, up, f"{where}.upcycle"))
    if phases is not None:
        if not isinstance(phases, list):
            raise ConfigError(f"{where}.phases: expected a list of phases, got {phases!r}")
        recipe.phases = [
            Phase(**_checked(Phase, p, f"{where}.phases[{i}]")) for i, p in enumerate(phases)
        ]
    recipe.name = recipe.name or name
    return _check(recipe, where)


def load_recipe(path: str | Path, plan: Any) -> Recipe:
    """The recipe in YAML file `path`, resolved against `plan`; its run name is `name:` or the
    file's stem. Unknown keys, wrong types and unknown plan keys are errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return parse_recipe(data, plan, str(path), path.stem)


def shipped_recipes() -> list[str]:
    """Names of the runs shipped as ume/recipes/NAME.yaml."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def modifiers() -> list[str]:
    """Names of the shipped modifiers (ume/recipes/modifiers/MOD.yaml)."""
    return sorted(p.stem for p in MODIFIER_DIR.glob("*.yaml"))


def unknown_run_error(name: str, where: str, user: dict[str, Path]) -> ConfigError:
    """The error for a run name that is no recipe: what the known runs and modifiers are."""
    return ConfigError(
        f"{where}: unknown run {name!r}; runs are the shipped recipes {shipped_recipes()}"
        + (f", the --recipe runs {sorted(user)}" if user else "")
        + f", each optionally with one or more distinct '+MOD' of {modifiers()} when it "
        "upcycles (e.g. ume_kmeans_fast_no_freeze+drop), or your own YAML file passed with "
        "--recipe (docs/recipes.md)"
    )


def resolve_run(
    name: str, plan: Any, user: dict[str, Path] | None = None, where: str = "--runs"
) -> Recipe:
    """The recipe of run `name`: a --recipe file (`user`: run name -> file), else a shipped
    recipe, plus its "+MOD" modifiers."""
    user = user or {}
    base, *mods = name.split("+")
    if base in user:
        recipe = load_recipe(user[base], plan)
    elif base in shipped_recipes():
        recipe = load_recipe(RECIPE_DIR / f"{base}.yaml", plan)
    else:
        raise unknown_run_error(name, where, user)
    if not mods:
        return recipe
    if recipe.upcycle is None or len(set(mods)) != len(mods):
        raise unknown_run_error(name, where, user)
    up = dataclasses.asdict(recipe.upcycle)
    for mod in mods:
        if mod not in modifiers():
            raise unknown_run_error(name, where, user)
        frag = load_recipe(MODIFIER_DIR / f"{mod}.yaml", plan)
        bare = dataclasses.replace(frag, upcycle=None, name="", description="")
        if frag.upcycle is None or bare != Recipe():
            raise ConfigError(f"{MODIFIER_DIR / mod}.yaml: a modifier sets only upcycle options")
        add = {k: v for k, v in dataclasses.asdict(frag.upcycle).items() if v is not None}
        clash = sorted(k for k in add if up[k] is not None)
        if clash:
            raise ConfigError(f"run {name!r}: +{mod} sets {clash}, which its recipe already sets")
        up.update(add)
    return dataclasses.replace(recipe, upcycle=UpcycleOptions(**up), init_dir="", name=name)


def raw_recipe(name: str, user: dict[str, Path] | None = None) -> dict | None:
    """The unresolved YAML mapping of recipe `name` (a --recipe run of `user`, else shipped),
    None when there is no such recipe."""
    path = (user or {}).get(name) or (RECIPE_DIR / f"{name}.yaml")
    if "/" in name or not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else None


def run_start(name: str, user: dict[str, Path] | None = None) -> str | None:
    """A run's `start` (read without a plan), None for a name that is no recipe."""
    raw = raw_recipe(name.split("+")[0], user)
    return None if raw is None else raw.get("start", "dense")


def user_recipes(paths: list[str | Path] | None, plan: Any) -> dict[str, Path]:
    """Run name -> file of the `--recipe` files, each loaded once to check it. A name that is
    a shipped recipe or modifier, or given twice, is refused (rename the file or set name:)."""
    out: dict[str, Path] = {}
    for p in paths or []:
        recipe = load_recipe(p, plan)
        n = recipe.name
        if n in shipped_recipes() or n in modifiers() or "+" in n or n in out:
            raise ConfigError(
                f"--recipe {p}: run name {n!r} is taken (a shipped recipe or modifier, another "
                "--recipe, or it holds '+'); rename the file or set `name:` in it"
            )
        if n == "dense" or recipe.start == "given":
            raise ConfigError(f"--recipe {p}: only the shipped `dense` run may start: given")
        out[n] = Path(p)
    return out
