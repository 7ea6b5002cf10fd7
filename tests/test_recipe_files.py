"""Runs as recipe files (ume/recipes/*.yaml): every shipped run makes exactly the upcycling and
training calls the run names made before recipes were files (tests/data/experiment_run_calls.json,
captured from that code), recipe files round-trip and are strict, and user recipes run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ume.config import PRESET_DIR, ConfigError, preset_config
from ume.expdir import MODEL_FILE
from ume.experiment import recipes
from ume.experiment.plan import load_plan
from ume.experiment.recipe import (
    RECIPE_DIR,
    Recipe,
    load_recipe,
    modifiers,
    resolve_run,
    shipped_recipes,
)

GOLDEN = Path(__file__).parent / "data" / "experiment_run_calls.json"


def _rel(p: Path | str, w: Path) -> str:
    p = Path(p)
    return "preset:" + p.stem if p.is_relative_to(PRESET_DIR) else p.relative_to(w).as_posix()


def _calls(name: str, preset: str, sets: list[str], w: Path, monkeypatch) -> list:
    """What run_one passes to upcycle_experiment and _train for `name` in a fresh workdir w."""
    import ume.upcycle

    plan = load_plan(preset, sets)
    dense = w / "runs" / "dense"
    dense.mkdir(parents=True)
    (dense / "config.yaml").write_text(preset_config(plan.model_config).read_text())
    for base in ("dense_wide", "moe_scratch"):
        (w / "runs" / base).mkdir(parents=True)
        (w / "runs" / base / MODEL_FILE).write_bytes(b"x")
        (w / "runs" / base / "train_info.json").write_text("{}")
    calls: list = []

    def upcycle(d, o, **kw):  # noqa: ANN001, ANN202
        kw = {k: (_rel(v, w) if k == "router_data" else v) for k, v in kw.items()}
        calls.append(["upcycle", _rel(d, w), _rel(o, w), kw])

    def train(run_dir, data, config, ov, init, phases=None):  # noqa: ANN001, ANN202
        init = _rel(init, w) if init else None
        calls.append(["train", _rel(run_dir, w), _rel(config, w), list(ov), init, phases])

    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", upcycle)
    monkeypatch.setattr(recipes, "_train", train)
    recipes.run_one(name, plan, preset, w, dense)
    return calls


def test_every_run_makes_the_calls_its_name_made_before(tmp_path: Path, monkeypatch) -> None:
    """All 300 (preset, --set, run) cases of the golden record, compared as canonical JSON
    (0 and 0.0 differ there, as they do in a recorded recipe's fingerprint)."""
    golden = json.loads(GOLDEN.read_text())
    assert len(golden) == 300
    for i, (key, want) in enumerate(sorted(golden.items())):
        preset, sets, name = key.split("|")
        got = _calls(name, preset, sets.split(), tmp_path / str(i), monkeypatch)
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), key
    covered = {k.split("|")[2] for k in golden} | {"dense"}
    assert set(shipped_recipes()) <= covered  # a new shipped recipe needs its own test


def test_a_recipe_file_round_trips(tmp_path: Path) -> None:
    plan = load_plan("small_6k", ["seed=3"])
    for name in [*shipped_recipes(), "ume_kmeans_top1_no_freeze+fine+drop"]:
        r = resolve_run(name, plan)
        back = load_recipe(_write(tmp_path, r.to_yaml(), "any.yaml"), plan)
        assert back == r, name
        assert "${" not in r.to_yaml()


def _write(tmp: Path, text: str, name: str = "mine.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("start: dense\nupcycel: {}\n", r"unknown key\(s\) \['upcycel'\]"),
        ("upcycle:\n  expert: 4\n", r"mine.yaml.upcycle: unknown key\(s\) \['expert'\]"),
        ("phases:\n  - {steps: 10, trainabel: moe}\n", r"phases\[0\]: unknown key"),
        ("upcycle:\n  experts: four\n", r"upcycle.experts: expected an integer"),
        ("steps: ${plan.extra_stepz}\n", r"extra_stepz\} is not a plan key"),
        ("start: densee\n", r"start 'densee': use dense, scratch, given or run:NAME"),
        ("start: scratch\nupcycle: {}\n", r"upcycle needs a trained start model"),
        ("overrides: [train.lr]\n", r"must look like section.key=value"),
        ("phases: moe\n", r"phases: expected a list"),
        ("- a\n", r"expected a mapping"),
    ],
)
def test_recipe_files_are_strict(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_recipe(_write(tmp_path, text), load_plan("quick"))


def test_plan_references_and_modifiers() -> None:
    plan = load_plan("small_6k", ["fast_lr_scale_no_freeze=6", "fine_groups=4"])
    r = resolve_run("ume_kmeans_fast_no_freeze+fine", plan)
    assert r.phases[0].moe_lr_scale == 6.0 and r.upcycle.groups == 4
    assert r.init_dir == "" and r.name == "ume_kmeans_fast_no_freeze+fine"
    args = recipes.upcycle_args(r.upcycle, plan, Path("w/data"), 0)
    assert args["experts"] == plan.experts * 4  # fine experts keep the total parameters
    assert args["router_data"] == "w/data/train" and args["router_utts"] == plan.router_utts
    # a modified shared-init recipe upcycles into its own dir, not the shared _init_ume
    assert resolve_run("ume+noise", plan).init_dir == ""
    with pytest.raises(ConfigError, match=r"\+drop sets \['drop_ratio'\]"):
        resolve_run("ume_kmeans_drop_no_freeze+drop", plan)
    for bad in ("ume_kmeans+drops", "ume_kmeans+drop+drop", "dense_continued+drop", "umee"):
        with pytest.raises(ConfigError, match="unknown run"):
            resolve_run(bad, plan)
    assert modifiers() == ["drop", "fine", "noise", "router_noise"]


def test_kmeans_breaker_recipes() -> None:
    """What the k-means recipes upcycle with and train in (moved from the name rules)."""
    plan = load_plan("small")
    two = [{"steps": 250, "trainable": "moe"}, {"steps": 0, "trainable": "all"}]
    data = Path("w/data")

    def up_phases(name: str) -> tuple[dict, list[dict] | None]:
        r = resolve_run(name, plan)
        return recipes.upcycle_args(r.upcycle, plan, data, 0), [p.as_dict() for p in r.phases]

    up, phases = up_phases("ume_kmeans")
    assert (up["router_init"], up["router_data"], up["router_utts"], phases) == (
        "kmeans", "w/data/train", 200, two,
    )  # fmt: skip
    up, phases = up_phases("ume_kmeans_fast")
    assert up["router_init"] == "kmeans" and phases[0]["moe_lr_scale"] == plan.fast_lr_scale
    up, _ = up_phases("ume_all")
    assert up["router_init"] == plan.router_init  # ume_all's recipe is the one measured
    up, phases = up_phases("ume_kmeans_drop_no_freeze")
    assert up["drop_ratio"] == plan.drop_small and phases == []
    up, phases = up_phases("ume_kmeans_top1_fast_no_freeze")
    assert (up["top_k"], up["layers"]) == (1, "every_other")
    assert phases == [{"steps": 0, "trainable": "all", "moe_lr_scale": 3.0}]


def test_every_shipped_recipe_says_what_it_is() -> None:
    for name in shipped_recipes():
        r = load_recipe(RECIPE_DIR / f"{name}.yaml", load_plan("quick"))
        assert len(r.description) > 20, name
    assert Recipe().start == "dense"


MINE = """\
description: my recipe - 4 experts, top-1, a short frozen phase, my own steps and seed
start: dense
upcycle:
  experts: 4
  top_k: 1
  router_init: zeros
phases:
  - {steps: 20, trainable: moe, moe_lr_scale: 2}
  - {steps: 0, trainable: all}
steps: 50
seed: 3
overrides: [train.grad_clip=1.0]
"""


def test_a_user_recipe_upcycles_and_trains_as_written(tmp_path: Path, monkeypatch) -> None:
    import ume.upcycle

    upcycled, trained = [], []
    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", lambda d, o, **kw: upcycled.append(kw))
    monkeypatch.setattr(recipes, "_train", lambda *a: trained.append(a))
    plan = load_plan("quick")
    user = {"mine": _write(tmp_path, MINE)}
    recipes.run_one("mine", plan, "quick", tmp_path, tmp_path / "runs" / "dense", user)
    up = upcycled[0]
    assert (up["experts"], up["top_k"], up["router_init"], up["seed"]) == (4, 1, "zeros", 3)
    assert up["slots"] == plan.slots and up["balance_coef"] == plan.balance_coef  # the plan's
    run_dir, _, config, ov, init, phases = trained[0]
    assert run_dir.name == "mine" and init.name == "_init_mine"
    assert "train.max_steps=50" in ov and "train.seed=3" in ov and ov[-1] == "train.grad_clip=1.0"
    assert phases == [
        {"steps": 20, "trainable": "moe", "moe_lr_scale": 2.0},
        {"steps": 0, "trainable": "all"},
    ]


def test_experiment_runs_recipe_files_and_refuses_taken_names(tmp_path: Path, monkeypatch) -> None:
    """`ume experiment --recipe FILE`: the file's run (named after the file) is done after the
    dense model it continues, and scored in results.json; a file named like a shipped recipe
    is refused, and so is a misspelt key in it."""
    from ume.experiment import runner

    done = []
    monkeypatch.setattr(runner, "synthesize", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run_one", lambda name, *a: done.append((name, a[-1])))
    monkeypatch.setattr(runner, "evaluate_run", lambda *a: {"test_mer": 50.0})
    monkeypatch.setattr(runner, "plot_curves", lambda *a: None)
    w = tmp_path / "w"
    dense = w / "runs" / "dense"
    dense.mkdir(parents=True)
    (dense / MODEL_FILE).write_bytes(b"dense")
    (dense / "train_info.json").write_text("{}")
    mine = _write(tmp_path, MINE)
    res = runner.run_experiment("quick", w, recipe_files=[mine])
    assert [n for n, _ in done] == ["mine"] and done[0][1] == {"mine": mine}
    assert set(res["runs"]) == {"dense", "mine"} and res["runs"]["mine"]["start"] == "dense"
    for name, text, error in (
        ("ume.yaml", MINE, "run name 'ume' is taken"),
        ("typo.yaml", "start: dense\nstep: 5\n", r"unknown key\(s\) \['step'\]"),
    ):
        with pytest.raises(ConfigError, match=error):
            runner.run_experiment("quick", w, recipe_files=[_write(tmp_path, text, name)])


def test_a_results_row_is_rescored_when_its_runs_weights_change(
    tmp_path: Path, monkeypatch
) -> None:
    """A retrained dense model (same recipe, new weights) gets a new results row; a row
    recorded before rows named their weights learns them without a re-evaluation."""
    from ume.experiment import runner

    scored = []
    monkeypatch.setattr(runner, "synthesize", lambda *a, **k: None)
    monkeypatch.setattr(runner, "evaluate_run", lambda d, _: scored.append(d.name) or {})
    monkeypatch.setattr(runner, "train_subset_mer", lambda *a: 1.0)
    monkeypatch.setattr(runner, "plot_curves", lambda *a: None)
    w = tmp_path / "w"
    dense = w / "runs" / "dense"
    dense.mkdir(parents=True)
    (dense / MODEL_FILE).write_bytes(b"dense")
    (dense / "train_info.json").write_text("{}")
    runner.run_experiment("quick", w, runs=["dense"])
    runner.run_experiment("quick", w, runs=["dense"])
    assert scored == ["dense"]
    results = json.loads((w / "results.json").read_text())
    del results["runs"]["dense"]["weights"]  # a row from before the column
    (w / "results.json").write_text(json.dumps(results))
    runner.run_experiment("quick", w, runs=["dense"])
    assert scored == ["dense"]
    assert json.loads((w / "results.json").read_text())["runs"]["dense"]["weights"]
    (dense / MODEL_FILE).write_bytes(b"dense, retrained")
    runner.run_experiment("quick", w, runs=["dense"])
    assert scored == ["dense", "dense"]


def test_the_cli_takes_recipe_files() -> None:
    from ume.cli import build_parser

    args = build_parser().parse_args(
        ["experiment", "--workdir", "w", "--recipe", "a.yaml", "--recipe", "b.yaml"]
    )
    assert args.recipe == ["a.yaml", "b.yaml"] and args.runs is None


def test_the_example_recipe_loads_under_every_preset() -> None:
    from ume.config import experiment_presets

    example = Path(__file__).parents[1] / "examples" / "recipe_top1_short.yaml"
    for preset in experiment_presets():
        plan = load_plan(preset)
        r = load_recipe(example, plan)
        assert (r.name, r.upcycle.top_k, r.steps) == ("recipe_top1_short", 1, plan.extra_steps)


def test_recipe_files_are_package_data() -> None:
    """An installed ume (not the checkout) must find its recipes: every file in ume/recipes/
    matches a package-data glob of pyproject.toml."""
    import re
    import tomllib

    root = Path(__file__).parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ume"]
    files = [p.relative_to(root / "ume").as_posix() for p in RECIPE_DIR.rglob("*.yaml")]
    assert len(files) == len(shipped_recipes()) + len(modifiers())
    pats = [re.escape(g).replace(r"\*", "[^/]*") for g in globs]  # `*` stays in its folder
    missing = [f for f in files if not any(re.fullmatch(p, f) for p in pats)]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
