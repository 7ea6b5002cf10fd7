"""`ume experiment --preset tiny`: every run end to end, results.json schema, resumability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ume.cli import main

RUNS = (
    "dense",
    "dense_continued",
    "ume",
    "ume_no_freeze",
    "ume_no_balance",
    "ume_drop",
    "moe_scratch",
)
ROW_KEYS = (
    "test_mer",
    "train_subset_mer",
    "test_cer_zh",
    "test_wer_en",
    "rtf_b1",
    "train_seconds",
    "params_total",
    "params_active",
    "heldout_mer",
    "rel_change_vs_dense_pct",
)


@pytest.mark.slow  # trains and evaluates every run of the tiny preset
def test_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert main(["experiment", "--preset", "tiny", "--workdir", str(work), "--from-scratch"]) == 0
    res = json.loads((work / "results.json").read_text())
    assert set(res["runs"]) == set(RUNS)
    for name in RUNS:
        row = res["runs"][name]
        for k in ROW_KEYS:
            assert k in row, (name, k)
        assert (work / "runs" / name / "model.safetensors").is_file()
    dense, ume = res["runs"]["dense"], res["runs"]["ume"]
    assert ume["params_total"] > dense["params_total"]
    assert dense["params_active"] == dense["params_total"]
    assert dense["params_total"] < ume["params_active"] < ume["params_total"]
    # continued runs start their curve at the initial model (step 0)
    assert res["runs"]["ume"]["curve"][0]["step"] == 0
    # continued runs never replay the from-scratch warm-up curriculum on a trained model
    for name in ("dense_continued", "ume"):
        train_cfg = yaml.safe_load((work / "runs" / name / "config.yaml").read_text())["train"]
        assert train_cfg["sortagrad"] is False and train_cfg["curriculum_steps"] == 0, name
    # every non-dense run carries a paired-bootstrap interval against dense
    lo, hi = res["runs"]["ume"]["rel_ci95_vs_dense_pct"]
    assert lo <= res["runs"]["ume"]["rel_change_vs_dense_pct"] <= hi
    assert 0.0 <= res["runs"]["ume"]["p_better_than_dense"] <= 1.0
    for f in ("results.md", "dev_mer_curves.png", "expert_load.png"):
        assert (work / f).is_file(), f
    # the generalisation gap: a fixed train subset decoded like test
    hyp_train = (work / "runs" / "dense" / "hyp_train_subset.txt").read_text().splitlines()
    assert 0 < len(hyp_train) <= 400
    assert 0.0 <= dense["train_subset_mer"] <= 200.0
    # a rerun skips finished runs (no retraining: train_info untouched) and fills in the
    # train-subset MER of rows written before that column existed
    info = work / "runs" / "ume" / "train_info.json"
    before = info.stat().st_mtime_ns
    old = json.loads((work / "results.json").read_text())
    del old["runs"]["ume"]["train_subset_mer"]
    (work / "results.json").write_text(json.dumps(old))
    assert main(["experiment", "--preset", "tiny", "--workdir", str(work)]) == 0
    assert info.stat().st_mtime_ns == before
    res = json.loads((work / "results.json").read_text())
    assert res["runs"]["ume"]["train_subset_mer"] == ume["train_subset_mer"]
    # a finished run bundles bit-exact in float32, under the output directory's name
    import torch
    from safetensors.torch import load_file

    from ume.experiment.bundle import bundle

    out = tmp_path / "models" / "dense_tiny"
    card = bundle(work / "runs" / "dense_continued", work / "data", out, "cmd", "float32", "h")
    want = load_file(work / "runs" / "dense_continued" / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert (card["dtype"], card["history"], card["check"]["num_utts"]) == ("float32", "h", 60)
    assert "`dense_tiny`" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="float16 or float32"):
        bundle(work / "runs" / "dense", work / "data", out, "cmd", "bfloat16")


def test_experiment_on_another_corpus_needs_its_own_dense(tmp_path: Path, monkeypatch) -> None:
    from ume.config import ConfigError
    from ume.experiment import runner as experiment

    monkeypatch.setattr(experiment, "synthesize", lambda *a, **k: None)
    plan = experiment.load_plan("large")
    assert (plan.corpus, plan.model_config, plan.bundled_dense) == ("large", "paper", False)
    with pytest.raises(ConfigError, match="--from-scratch"):
        experiment.run_experiment("large", tmp_path / "w")


def test_add_comparisons_targets_and_relative_change() -> None:
    from ume.experiment.runner import add_comparisons

    def curve(*pts: tuple[int, float, float]) -> list[dict]:
        return [{"step": s, "minutes": m, "dev_mer": d} for s, m, d in pts]

    res = {
        "runs": {
            "dense": {"test_mer": 40.0, "train_seconds": 600.0, "curve": []},
            "dense_continued": {
                "test_mer": 38.0,
                "curve": curve((0, 0.0, 50.0), (100, 1.0, 52.0), (200, 2.0, 47.0)),
            },
            "ume": {
                "test_mer": 34.0,
                "curve": curve((0, 0.0, 50.0), (100, 1.5, 44.0), (200, 3.0, 41.0)),
            },
            "moe_scratch": {
                "test_mer": 60.0,
                "curve": curve((100, 5.0, 90.0), (200, 10.0, 45.0), (300, 15.0, 46.0)),
            },
        }
    }
    out = add_comparisons(res)
    runs = out["runs"]
    assert out["dense_dev_mer_greedy"] == 50.0  # the continued runs' step-0 evaluation
    assert out["best_dev_mer_greedy"] == {"dense": 50.0, "ume": 41.0, "scratch": 45.0}
    assert out["dense_minutes"] == 10.0
    assert runs["ume"]["rel_change_vs_dense_pct"] == -15.0
    assert runs["dense_continued"]["rel_change_vs_dense_pct"] == -5.0
    # the step-0 point is the starting (dense) model: reaching a target there is not training
    assert runs["ume"]["minutes_to_dense_dev_mer"] == 1.5
    assert runs["dense_continued"]["minutes_to_dense_dev_mer"] == 2.0  # 52 at 1 min misses 50
    assert runs["ume"]["minutes_to_scratch_dev_mer"] == 1.5  # first point <= 45
    assert runs["ume"]["minutes_to_ume_dev_mer"] == 3.0
    assert runs["moe_scratch"]["minutes_to_scratch_dev_mer"] == 10.0
    assert runs["moe_scratch"]["minutes_to_ume_dev_mer"] is None  # never reached 41
    assert runs["dense_continued"]["minutes_to_scratch_dev_mer"] is None


def test_best_trained_ignores_the_starting_point() -> None:
    from ume.experiment.runner import best_trained

    pts = [
        {"step": 0, "minutes": 0.0, "dev_mer": 30.0},
        {"step": 50, "minutes": 1.0, "dev_mer": 35.0},
    ]
    assert best_trained(pts) == 35.0
    assert best_trained(pts[:1]) is None


def _fake_run(run_dir: Path, weights: bytes = b"w") -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "model.safetensors").write_bytes(weights)
    (run_dir / "train_info.json").write_text('{"curve": []}')


def _fake_workdir(root: Path, runs: dict[str, bytes], rows: dict, test_text: str) -> Path:
    for name, weights in runs.items():
        _fake_run(root / "runs" / name, weights)
    (root / "data" / "test").mkdir(parents=True)
    (root / "data" / "test" / "text").write_text(test_text)
    (root / "results.json").write_text(json.dumps({"runs": rows}))
    return root


def test_merge_runs_copies_finished_runs_and_refuses_mismatches(tmp_path: Path) -> None:
    from ume.config import ConfigError
    from ume.experiment.runner import merge_runs

    a = _fake_workdir(
        tmp_path / "a",
        {"dense": b"D", "ume": b"U-a"},
        {"dense": {"test_mer": 40.0, "evaluated": True}, "ume": {"test_mer": 39.0}},
        "u1 你好\n",
    )
    b = _fake_workdir(
        tmp_path / "b",
        {"dense": b"D", "ume": b"U-b", "moe_scratch": b"S", "ume_no_balance": b"N"},
        {
            "moe_scratch": {"test_mer": 41.0, "evaluated": True},
            "ume_no_balance": {"test_mer": 42.0, "evaluated": True},
            "ume": {"test_mer": 1.0, "evaluated": True},
        },
        "u1 你好\n",
    )
    (b / "runs" / "ume_drop").mkdir()  # unfinished: no weights, never copied
    assert merge_runs(b, a) == ["moe_scratch", "ume_no_balance"]
    rows = json.loads((a / "results.json").read_text())["runs"]
    assert rows["moe_scratch"]["test_mer"] == 41.0 and rows["ume_no_balance"]["test_mer"] == 42.0
    assert rows["ume"]["test_mer"] == 39.0  # a run this workdir finished is kept
    assert (a / "runs" / "ume" / "model.safetensors").read_bytes() == b"U-a"
    assert (a / "runs" / "moe_scratch" / "model.safetensors").read_bytes() == b"S"
    assert not (a / "runs" / "ume_drop").exists()

    # a continued run trained from another dense model cannot join this table
    c = _fake_workdir(tmp_path / "c", {"dense": b"D2", "ume_drop": b"X"}, {}, "u1 你好\n")
    with pytest.raises(ConfigError, match="ume_drop.*not this workdir's dense"):
        merge_runs(c, a)
    # ... and neither can any run scored on another test set
    d = _fake_workdir(tmp_path / "d", {"moe_scratch": b"S"}, {}, "u1 再见\n")
    with pytest.raises(ConfigError, match="differs"):
        merge_runs(d, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no runs/"):
        merge_runs(tmp_path / "nowhere", a)


def test_merge_refuses_a_continued_capacity_control_of_another_base(tmp_path: Path) -> None:
    """dense_wide_continued is only comparable beside the dense_wide it continued."""
    from ume.config import ConfigError
    from ume.experiment.runner import merge_runs

    a = _fake_workdir(tmp_path / "a", {"dense_wide": b"W1"}, {}, "u1 你好\n")
    b = _fake_workdir(
        tmp_path / "b", {"dense_wide": b"W2", "dense_wide_continued": b"WC"}, {}, "u1 你好\n"
    )
    with pytest.raises(ConfigError, match="dense_wide_continued.*not this workdir's dense_wide"):
        merge_runs(b, a)
    c = _fake_workdir(
        tmp_path / "c", {"dense_wide": b"W1", "dense_wide_continued": b"WC"}, {}, "u1 你好\n"
    )
    assert merge_runs(c, a) == ["dense_wide_continued"]


def test_scratch_only_workdir_needs_no_dense(tmp_path: Path, monkeypatch) -> None:
    """`--runs moe_scratch` on a corpus without a bundled dense model trains only the scratch
    MoE (the side-by-side workdir of docs/RESULTS.md), no --from-scratch or --model needed."""
    from ume.experiment import runner as experiment

    done = []
    monkeypatch.setattr(experiment, "synthesize", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "run_one", lambda name, *a: done.append(name))
    monkeypatch.setattr(experiment, "evaluate_run", lambda *a: {"test_mer": 50.0})
    monkeypatch.setattr(experiment, "plot_curves", lambda *a: None)
    res = experiment.run_experiment("large", tmp_path / "w", runs=["moe_scratch"])
    assert done == ["moe_scratch"] and res["runs"]["moe_scratch"]["test_mer"] == 50.0
    assert not (tmp_path / "w" / "runs" / "dense").exists()
    with pytest.raises(experiment.ConfigError, match="unknown run"):
        experiment.run_experiment("large", tmp_path / "w", runs=["moe_scrtch"])


def test_plan_set_changes_one_key_is_recorded_and_binds_the_workdir(
    tmp_path: Path, monkeypatch
) -> None:
    """`ume experiment --set KEY=VALUE`: the changed plan reaches the runs, results.json and
    results.md say so, and the workdir (and any merge into it) keeps that plan."""
    from ume.experiment import runner as experiment

    plans = []
    monkeypatch.setattr(experiment, "synthesize", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "run_one", lambda name, plan, *a: plans.append(plan))
    monkeypatch.setattr(experiment, "evaluate_run", lambda *a: {"test_mer": 50.0})
    monkeypatch.setattr(experiment, "plot_curves", lambda *a: None)
    w, hot = tmp_path / "w", ["fast_lr_scale_no_freeze=6", "balance_coef=0"]
    res = experiment.run_experiment("large", w, runs=["moe_scratch"], plan_set=hot)
    assert plans[0].fast_lr_scale_no_freeze == 6.0 and plans[0].balance_coef == 0.0
    assert (
        res["plan_set"] == hot and json.loads((w / "results.json").read_text())["plan_set"] == hot
    )
    assert "--set fast_lr_scale_no_freeze=6 --set balance_coef=0" in (w / "results.md").read_text()
    with pytest.raises(experiment.ConfigError, match="made with --set.*new --workdir"):
        experiment.run_experiment("large", w, runs=["moe_scratch"])  # the preset's own plan
    with pytest.raises(experiment.ConfigError, match="unknown key.*fast_lr_scale_no_freez"):
        experiment.run_experiment("large", tmp_path / "x", plan_set=["fast_lr_scale_no_freez=6"])
    plain = tmp_path / "plain"
    experiment.run_experiment("large", plain, runs=["moe_scratch"])
    (w / "runs").mkdir()  # the fake run_one trained nothing there
    with pytest.raises(experiment.ConfigError, match="only runs of one plan"):
        experiment.merge_runs(w, plain)


@pytest.mark.parametrize(
    ("run", "top_k", "slots"),
    [("ume_top1", 1, ["encoder_macaron", "encoder_ffn"]), ("ume_one_slot", 2, ["encoder_ffn"])],
)
def test_speed_variant_runs_upcycle_their_shape(
    tmp_path: Path, monkeypatch, run: str, top_k: int, slots: list[str]
) -> None:
    """ume_top1 / ume_one_slot: UME's recipe (two phases) on the cheaper shapes of
    docs/PERFORMANCE.md; checked without training by capturing what would be trained."""
    import ume.upcycle
    from ume.experiment import recipes
    from ume.experiment import runner as experiment

    upcycled, trained = [], []
    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", lambda d, o, **kw: upcycled.append(kw))
    monkeypatch.setattr(recipes, "_train", lambda *a: trained.append(a))
    plan = experiment.load_plan("large")
    recipes.run_one(run, plan, "large", tmp_path, tmp_path / "dense")
    assert upcycled[0]["top_k"] == top_k and upcycled[0]["slots"] == slots
    assert upcycled[0]["experts"] == plan.experts
    phases = trained[0][5]
    assert [p["trainable"] for p in phases] == [plan.phase1_trainable, "all"]
    experiment.check_runs([run], "test")  # a known run name


@pytest.mark.filterwarnings("ignore:No artists with labels")  # Axes.plot is recorded, not drawn
def test_cumulative_curves_start_where_each_run_started(tmp_path: Path, monkeypatch) -> None:
    """The cumulative panel shifts a run from the dense model by dense's minutes and a continued
    capacity control by its from-scratch run's; the own-minutes panel shifts nothing."""
    import matplotlib.axes

    from ume.experiment.report import plot_curves

    seen: dict[str, list[list[float]]] = {}

    def record(self, xs, ys, *a, label: str = "", **k):  # noqa: ANN001, ANN202
        seen.setdefault(label, []).append(list(xs))

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    point = [{"minutes": 1.0, "dev_mer": 50.0}]
    results = {
        "dense_minutes": 10.0,
        "runs": {
            "dense": {"curve": point, "train_seconds": 600},
            "ume": {"curve": point},
            "dense_wide": {"curve": point, "train_seconds": 1200},
            "dense_wide_continued": {"curve": point},
        },
    }
    plot_curves(results, tmp_path / "c.png")
    assert seen["dense"] == [[1.0], [1.0]] and seen["dense_wide"] == [[1.0], [1.0]]
    assert seen["ume"] == [[1.0], [11.0]]
    assert seen["dense_wide_continued"] == [[1.0], [21.0]]


def test_breaker_modifiers_add_one_breaker_to_a_recipe(tmp_path: Path, monkeypatch) -> None:
    """ "BASE+MOD": the base breaker recipe (its phases and lr) plus each modifier's breaker at
    the plan's value; unknown, repeated or clashing modifiers are refused by name."""
    import ume.upcycle
    from ume.experiment import recipes
    from ume.experiment import runner as experiment

    upcycled, trained = [], []
    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", lambda d, o, **kw: upcycled.append(kw))
    monkeypatch.setattr(recipes, "_train", lambda *a: trained.append(a))
    plan = experiment.load_plan("small_6k")
    (tmp_path / "data" / "train").mkdir(parents=True)
    name = "ume_kmeans_fast_no_freeze+drop+router_noise"
    experiment.check_runs([name, "ume_noise+fine"], "test")
    recipes.run_one(name, plan, "small_6k", tmp_path, tmp_path / "dense")
    up = upcycled[0]
    assert up["drop_ratio"] == plan.drop_small and up["router_noise"] == plan.router_noise
    assert up["router_init"] == "kmeans" and "noise_std" not in up
    # the base's single unfrozen phase at the fast expert lr is kept
    assert trained[0][5] == [
        {"steps": 0, "trainable": "all", "moe_lr_scale": plan.fast_lr_scale_no_freeze}
    ]
    assert trained[0][0] == tmp_path / "runs" / name
    recipes.run_one("ume_kmeans_no_freeze+fine", plan, "small_6k", tmp_path, tmp_path / "dense")
    assert upcycled[1]["groups"] == plan.fine_groups
    assert upcycled[1]["experts"] == plan.experts * plan.fine_groups
    for bad in ("ume_kmeans+drops", "ume_kmeans+drop+drop", "dense_continued+drop"):
        with pytest.raises(experiment.ConfigError, match="unknown run"):
            experiment.check_runs([bad], "test")
    experiment.check_runs(["ume+noise"], "test")  # any upcycling recipe takes modifiers
    with pytest.raises(experiment.ConfigError, match=r"\+drop sets \['drop_ratio'\]"):
        recipes.run_one("ume_kmeans_drop_no_freeze+drop", plan, "small_6k", tmp_path, tmp_path)


def test_plan_seed_reseeds_upcycling_and_training_only_when_set(
    tmp_path: Path, monkeypatch
) -> None:
    """`--set seed=N` repeats a recipe with other randomness (upcycling and training); the
    default leaves recipes as they were recorded before `seed` existed."""
    import ume.upcycle
    from ume.experiment import recipes
    from ume.experiment import runner as experiment

    upcycled, trained = [], []
    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", lambda d, o, **kw: upcycled.append(kw))
    monkeypatch.setattr(recipes, "_train", lambda *a: trained.append(a))
    (tmp_path / "data" / "train").mkdir(parents=True)
    for i, sets in enumerate(([], ["seed=7"])):
        plan = experiment.load_plan("small_6k", sets)
        recipes.run_one("ume_kmeans_fast_no_freeze", plan, "small_6k", tmp_path / str(i), tmp_path)
    assert "seed" not in upcycled[0] and not any("seed" in o for o in trained[0][3])
    assert upcycled[1]["seed"] == 7 and "train.seed=7" in trained[1][3]
