"""`ume experiment` reuses a finished run or an `_init_*` upcycled model only if the current plan
made it (issue 16: change experts or top_k and the old runs were reported under the new
settings). Trainer and upcycling are replaced by fakes that only write the files they would."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ume.config import ConfigError
from ume.expdir import MODEL_FILE
from ume.experiment import recipes
from ume.experiment.fingerprint import RECIPE_FILE, check_or_record, file_sha256, read_recipe
from ume.experiment.plan import load_plan


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch) -> dict[str, list]:
    import ume.train.trainer
    import ume.upcycle

    made: dict[str, list] = {"upcycled": [], "trained": []}

    def fake_upcycle(dense: Path, out: Path, **kw) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(json.dumps(kw).encode())
        (out / "config.yaml").write_text(f"# experts {kw['experts']} top_k {kw['top_k']}\n")
        made["upcycled"].append((out.name, kw))

    class FakeTrainer:
        def __init__(self, cfg, run_dir, *a, **kw) -> None:  # noqa: ANN001
            self.run_dir = Path(run_dir)

        def run(self) -> None:
            (self.run_dir / MODEL_FILE).write_bytes(b"trained")
            (self.run_dir / "train_info.json").write_text("{}")
            made["trained"].append(self.run_dir.name)

    monkeypatch.setattr(ume.upcycle, "upcycle_experiment", fake_upcycle)
    monkeypatch.setattr(ume.train.trainer, "Trainer", FakeTrainer)
    monkeypatch.setattr(recipes, "load_config", lambda *a, **k: _FakeCfg())
    dense = tmp_path / "runs" / "dense"
    dense.mkdir(parents=True)
    (dense / MODEL_FILE).write_bytes(b"dense weights")
    return made


class _FakeCfg:
    class train:  # noqa: N801
        phases: list = []


def test_finished_runs_of_another_plan_are_refused(tmp_path: Path, fakes: dict) -> None:
    plan = load_plan("quick")
    dense = tmp_path / "runs" / "dense"
    recipes.run_one("ume", plan, "quick", tmp_path, dense)
    assert fakes["trained"] == ["ume"] and len(fakes["upcycled"]) == 1
    assert read_recipe(tmp_path / "runs" / "ume")["recipe"]["kind"] == "train"

    recipes.run_one("ume", plan, "quick", tmp_path, dense)  # same plan: reused, nothing redone
    assert fakes["trained"] == ["ume"] and len(fakes["upcycled"]) == 1

    other = dataclasses.replace(plan, experts=plan.experts * 2)
    with pytest.raises(ConfigError, match=r"(?s)_init_ume.*another plan") as e:
        recipes.run_one("ume", other, "quick", tmp_path, dense)
    msg = str(e.value)
    assert f"experts: {plan.experts} then, {plan.experts * 2} now" in msg
    assert "Delete" in msg and "--workdir" in msg
    assert fakes["trained"] == ["ume"]  # the old run was neither reused nor overwritten

    # a trained run whose own recipe changed (top_k is an upcycling argument, freeze_steps a
    # training one) is refused too, naming the run
    slower = dataclasses.replace(plan, freeze_steps=plan.freeze_steps + 1)
    with pytest.raises(ConfigError, match=r"(?s)runs/ume was made by another plan.*phases"):
        recipes.run_one("ume", slower, "quick", tmp_path, dense)


def test_a_new_dense_model_invalidates_what_was_made_from_the_old(
    tmp_path: Path, fakes: dict
) -> None:
    plan = load_plan("quick")
    dense = tmp_path / "runs" / "dense"
    recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)
    (dense / MODEL_FILE).write_bytes(b"another dense model")
    with pytest.raises(ConfigError, match=r"(?s)dense_continued.*init: .weights:"):
        recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)


def test_recipe_rules(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fp = check_or_record(run, {"a": 1})
    assert check_or_record(run, {"a": 1}) == fp  # same recipe
    assert check_or_record(run, {"a": 2}) != fp  # no output yet: the stale recipe is replaced
    (run / MODEL_FILE).write_bytes(b"w")
    with pytest.raises(ConfigError, match="a: 2 then, 3 now"):
        check_or_record(run, {"a": 3})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / MODEL_FILE).write_bytes(b"w")  # made before recipes were stored: recorded
    check_or_record(legacy, {"a": 1})
    assert (legacy / RECIPE_FILE).is_file()
    (legacy / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_or_record(legacy, {"a": 1})


def test_every_experiment_preset_loads_and_small_hot_differs_from_small_only_in_lr() -> None:
    from ume.config import experiment_presets

    names = experiment_presets()  # also `ume experiment --preset`'s choices
    assert {"quick", "small", "small_hot", "small_long", "small_6k"} <= set(names)
    plans = {n: load_plan(n) for n in names}  # strict: a misspelt key raises
    small, hot = (dataclasses.asdict(plans[n]) for n in ("small", "small_hot"))
    diff = {k for k in small if small[k] != hot[k]}
    assert diff == {"lr", "runs"}, diff  # same dense, data, steps, schedule, MoE shape
    assert hot["lr"] == 5 * small["lr"]


def test_upcycle_recipe_does_not_depend_on_the_workdir(tmp_path: Path) -> None:
    args = {"experts": 8, "router_init": "kmeans", "router_data": None}
    recs = []
    for w in ("w1", "w2"):
        work = tmp_path / w
        args["router_data"] = str(work / "data" / "train")
        recs.append(recipes.upcycle_recipe("weights:x", work / "runs" / "_init_ume_kmeans", args))
    assert recs[0] == recs[1] and recs[0]["router_data"] == "<workdir>/data/train"
    # data/ a symlink to a shared corpus (how the small runs share one): still the workdir's
    shared = tmp_path / "corpus"
    (shared / "train").mkdir(parents=True)
    for w in ("w3", "w4"):
        (tmp_path / w).mkdir()
        (tmp_path / w / "data").symlink_to(shared)
        args["router_data"] = str(tmp_path / w / "data" / "train")
        recs.append(recipes.upcycle_recipe("weights:x", tmp_path / w / "runs" / "_init", args))
    assert recs[2] == recs[3] == recs[0]
    outside = recipes.upcycle_recipe(
        "weights:x", tmp_path / "w1" / "runs" / "_init", {"router_data": "/elsewhere/train"}
    )
    assert outside["router_data"] == "/elsewhere/train"  # data outside the workdir: as given


def test_a_kmeans_init_recorded_with_the_path_it_was_given_is_reused(
    tmp_path: Path, fakes: dict
) -> None:
    """An _init_ume_kmeans* dir recorded before the workdir-relative router_data form (the
    path as passed) is the same upcycled model: resuming its run reuses it instead of refusing
    it, and its record is kept (the run made from it names that fingerprint)."""
    from ume.experiment.fingerprint import fingerprint

    plan = load_plan("small_6k")
    dense = tmp_path / "runs" / "dense"
    recipes.run_one("ume_kmeans_no_freeze", plan, "small_6k", tmp_path, dense)
    init = tmp_path / "runs" / "_init_ume_kmeans_no_freeze"
    rec = read_recipe(init)["recipe"]
    assert rec["router_data"] == "<workdir>/data/train"
    old = dict(rec, router_data=str(tmp_path / "data" / "train"))
    (init / RECIPE_FILE).write_text(json.dumps({"fingerprint": fingerprint(old), "recipe": old}))
    (tmp_path / "runs" / "ume_kmeans_no_freeze" / MODEL_FILE).unlink()  # interrupted run
    recipes.run_one("ume_kmeans_no_freeze", plan, "small_6k", tmp_path, dense)
    assert read_recipe(init)["fingerprint"] == fingerprint(old)
    assert len(fakes["upcycled"]) == 1 and fakes["trained"] == ["ume_kmeans_no_freeze"] * 2
    # another dense model's record is still refused
    other = dict(old, dense="weights:other")
    (init / RECIPE_FILE).write_text(
        json.dumps({"fingerprint": fingerprint(other), "recipe": other})
    )
    with pytest.raises(ConfigError, match="another plan"):
        recipes.run_one("ume_kmeans_no_freeze", plan, "small_6k", tmp_path, dense)


def test_a_capacity_control_is_continued_from_its_own_finished_run(
    tmp_path: Path, fakes: dict
) -> None:
    """dense_wide_continued / moe_scratch_continued train the workdir's finished from-scratch
    run with dense_continued's overrides; without that run they say which run to do first."""
    from ume.experiment.fingerprint import model_fingerprint

    plan = load_plan("small_6k")
    dense = tmp_path / "runs" / "dense"
    with pytest.raises(ConfigError, match="run dense_wide first"):
        recipes.run_one("dense_wide_continued", plan, "small_6k", tmp_path, dense)
    wide = tmp_path / "runs" / "dense_wide"
    wide.mkdir()
    (wide / MODEL_FILE).write_bytes(b"wide weights")
    (wide / "train_info.json").write_text("{}")
    (wide / "config.yaml").write_text("model:\n  encoder:\n    d_ff: 576\n")
    recipes.run_one("dense_wide_continued", plan, "small_6k", tmp_path, dense)
    assert fakes["trained"] == ["dense_wide_continued"]
    rec = read_recipe(tmp_path / "runs" / "dense_wide_continued")["recipe"]
    assert rec["init"] == model_fingerprint(wide)
    assert rec["overrides"] == recipes._continue_overrides(plan)
    assert "train.max_steps=6000" in rec["overrides"]


def test_a_comment_edit_keeps_runs_and_older_records_stay_valid(
    tmp_path: Path, fakes: dict
) -> None:
    """The config is hashed by content, not bytes: a comment-only edit of it (which made the
    `small` merge refuse dense_wide) keeps a run reusable; a value edit does not. A run recorded
    when the file's bytes were hashed is still accepted, and so are the runs made from it."""
    from ume.experiment.fingerprint import fingerprint

    plan = load_plan("quick")
    dense = tmp_path / "runs" / "dense"
    cfg = dense / "config.yaml"
    cfg.write_text("train:\n  lr: 0.001  # peak\n")
    recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)
    cfg.write_text("# a new comment\ntrain:\n  lr: 0.001   # the peak lr\n")
    recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)  # reused, not refused
    assert fakes["trained"] == ["dense_continued"]
    cfg.write_text("train:\n  lr: 0.002\n")
    with pytest.raises(ConfigError, match=r"(?s)dense_continued.*config: 'yaml:"):
        recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)

    # the same run recorded the old way (config = sha256 of the file's bytes) is accepted as is
    run = tmp_path / "runs" / "dense_continued"
    rec = read_recipe(run)["recipe"]
    old = dict(rec, config=file_sha256(cfg))
    (run / RECIPE_FILE).write_text(json.dumps({"fingerprint": fingerprint(old), "recipe": old}))
    recipes.run_one("dense_continued", plan, "quick", tmp_path, dense)
    assert read_recipe(run)["fingerprint"] == fingerprint(old)  # kept: later runs name it
    assert fakes["trained"] == ["dense_continued"]


def test_dense_continued_frozen_trains_in_phase_1_exactly_the_ffns_ume_turns_into_moe() -> None:
    """The freezing control (issue 13): its phase 1 trains the dense FFNs of UME's slots and
    layers, nothing else, so the dense model gets the same protected backbone as UME."""
    from ume.config import load_config, preset_config
    from ume.model.asr import ASRModel
    from ume.train.schedule import trainable_predicate

    cfg = load_config(preset_config("small"))
    model = ASRModel(cfg.model, 50)
    plan = load_plan("small_6k")  # both encoder slots, all 6 blocks
    pred = trainable_predicate(recipes.dense_ffn_prefixes(plan, cfg), 6)
    on = {n.rsplit(".", 2)[0] for n, _ in model.named_parameters() if pred(n)}
    assert on == {f"encoder.blocks.{i}.{s}" for i in range(6) for s in ("ffn", "ffn_macaron")}
    odd = dataclasses.replace(plan, slots=["encoder_ffn", "decoder_ffn"], layers="every_other")
    pred = trainable_predicate(recipes.dense_ffn_prefixes(odd, cfg), 6)
    on = {n.rsplit(".", 2)[0] for n, _ in model.named_parameters() if pred(n)}
    assert on == {"encoder.blocks.1.ffn", "encoder.blocks.3.ffn", "encoder.blocks.5.ffn",
                  "decoder.left.blocks.1.ffn"}  # fmt: skip
    with pytest.raises(ConfigError, match="select no dense FFN"):
        recipes.dense_ffn_prefixes(dataclasses.replace(plan, layers="9"), cfg)


def test_dense_continued_frozen_recipe(tmp_path: Path, fakes: dict, monkeypatch) -> None:
    """Its recipe records the two phases (phase 1 = the FFN prefixes, then all)."""
    from ume.config import load_config as real_load_config
    from ume.config import preset_config

    monkeypatch.setattr(
        recipes, "load_config", lambda *a, **k: real_load_config(preset_config("small"))
    )
    plan = load_plan("small_6k")
    dense = tmp_path / "runs" / "dense"
    recipes.run_one("dense_continued_frozen", plan, "small_6k", tmp_path, dense)
    phases = read_recipe(tmp_path / "runs" / "dense_continued_frozen")["recipe"]["phases"]
    assert phases[0]["steps"] == plan.freeze_steps == 1500
    assert "encoder.blocks.0.ffn_macaron." in phases[0]["trainable"]
    assert phases[1] == {"steps": 0, "trainable": "all"}
    assert fakes["trained"] == ["dense_continued_frozen"]


def test_a_retrained_dense_model_invalidates_what_was_made_from_its_old_weights(
    tmp_path: Path, fakes: dict
) -> None:
    """A dense model the experiment trained (so it has a recipe of its own) retrained with the
    same recipe has new weights: the upcycled dir and the runs made from the old weights are
    refused, not reused (the start model is named by its weights, not by its recipe)."""
    from ume.config import preset_config

    plan = load_plan("quick")
    w = tmp_path
    dense = w / "runs" / "dense"
    (dense / MODEL_FILE).unlink()
    recipes._train(dense, w / "data", preset_config("quick"), [], None)  # from scratch
    assert read_recipe(dense) is not None
    for run in ("ume", "dense_continued"):
        recipes.run_one(run, plan, "quick", w, dense)
    (dense / MODEL_FILE).write_bytes(b"retrained: same recipe, other weights")
    with pytest.raises(ConfigError, match=r"(?s)_init_ume was made by another plan.*dense: "):
        recipes.run_one("ume", plan, "quick", w, dense)
    with pytest.raises(ConfigError, match=r"(?s)dense_continued was made by another.*init: "):
        recipes.run_one("dense_continued", plan, "quick", w, dense)
    assert fakes["trained"] == ["dense", "ume", "dense_continued"]


def test_an_older_record_learns_its_start_weights_and_then_refuses_a_retrained_start(
    tmp_path: Path, fakes: dict
) -> None:
    """A record made before start models were named by weights (the dense model named by its
    recipe fingerprint) is reused as it is, and keeps its fingerprint; the first reuse adds the
    start model's weights identity, so a later retrain of the dense model is refused."""
    from ume.config import preset_config
    from ume.experiment.fingerprint import fingerprint, model_fingerprint

    plan = load_plan("quick")
    dense = tmp_path / "runs" / "dense"
    (dense / MODEL_FILE).unlink()
    recipes._train(dense, tmp_path / "data", preset_config("quick"), [], None)
    recipes.run_one("ume", plan, "quick", tmp_path, dense)
    init = tmp_path / "runs" / "_init_ume"
    old = dict(read_recipe(init)["recipe"], dense=model_fingerprint(dense))  # the older form
    (init / RECIPE_FILE).write_text(json.dumps({"fingerprint": fingerprint(old), "recipe": old}))
    recipes.run_one("ume", plan, "quick", tmp_path, dense)  # reused
    rec = read_recipe(init)
    assert rec["fingerprint"] == fingerprint(old) and rec["start_weights"].startswith("weights:")
    assert len(fakes["upcycled"]) == 1 and fakes["trained"] == ["dense", "ume"]
    (dense / MODEL_FILE).write_bytes(b"retrained")
    with pytest.raises(ConfigError, match="weights have changed since"):
        recipes.run_one("ume", plan, "quick", tmp_path, dense)


# Runs recorded in docs/experiment_small (the saturated series: started from the bundled
# dense_small, whose weights are in the repo), with the plan changes each was made with.
RECORDED = [
    ("results_sat_rerun", "dense_continued"),
    ("results_sat_dense_continued_seed2", "dense_continued"),
    ("results_sat_dense_continued_12k", "dense_continued"),
    ("results_sat_fast_no_freeze", "ume_kmeans_fast_no_freeze"),
    ("results_sat_fast_e16", "ume_kmeans_fast_no_freeze"),
    ("results_sat_fast_seed3", "ume_kmeans_fast_no_freeze"),
    ("results_sat_fast3_freeze", "ume_kmeans_fast"),
    ("results_sat_plus_fine", "ume_kmeans_fast_no_freeze+fine"),
    ("results_sat_plus_drop", "ume_kmeans_fast_no_freeze+drop"),
    ("results_sat_plus_noise", "ume_kmeans_fast_no_freeze+noise"),
    ("results_sat_plus_router_noise", "ume_kmeans_fast_no_freeze+router_noise"),
    ("results_sat_top1_no_freeze", "ume_kmeans_top1_no_freeze"),
    ("results_sat_top1_fast_no_freeze", "ume_kmeans_top1_fast_no_freeze"),
]


@pytest.mark.parametrize(("results", "run"), RECORDED)
def test_recorded_runs_resume_under_their_recorded_fingerprint(
    tmp_path: Path, monkeypatch, results: str, run: str
) -> None:
    """The recipe files rebuild each recorded run's recipe exactly: written in the form the
    run was recorded in (the start model named by its record), it has the fingerprint in the
    recorded results.json; a workdir holding that record resumes without retraining, and the
    run is still scored under that fingerprint. Upcycling is real (k-means clustering stubbed:
    it does not enter the recipe), training is faked."""
    import shutil

    import ume.train.trainer
    import ume.upcycle.convert
    from ume.experiment.fingerprint import fingerprint, model_fingerprint

    doc = json.loads(
        (Path(__file__).parents[1] / f"docs/experiment_small/{results}.json").read_text()
    )
    want = doc["runs"][run]["recipe"]
    monkeypatch.setattr(ume.upcycle.convert, "_kmeans_routers", lambda *a, **k: {"layers": []})
    trained = []

    class FakeTrainer:
        def __init__(self, cfg, run_dir, *a, **kw) -> None:  # noqa: ANN001
            self.run_dir = Path(run_dir)

        def run(self) -> None:
            (self.run_dir / MODEL_FILE).write_bytes(b"trained")
            (self.run_dir / "train_info.json").write_text("{}")
            trained.append(self.run_dir.name)

    monkeypatch.setattr(ume.train.trainer, "Trainer", FakeTrainer)
    dense = tmp_path / "runs" / "dense"
    shutil.copytree(Path(__file__).parents[1] / "models/small/dense_small", dense)
    (tmp_path / "data" / "train").mkdir(parents=True)
    plan = load_plan("small_6k", doc.get("plan_set"))
    recipes.run_one(run, plan, "small_6k", tmp_path, dense)
    run_dir = tmp_path / "runs" / run
    rec = read_recipe(run_dir)["recipe"]
    start = next(
        d
        for d in (dense, *(tmp_path / "runs").glob("_init_*"))
        if (d / MODEL_FILE).is_file() and f"weights:{file_sha256(d / MODEL_FILE)}" == rec["init"]
    )
    old = dict(rec, init=model_fingerprint(start))
    assert fingerprint(old) == want
    (run_dir / RECIPE_FILE).write_text(json.dumps({"fingerprint": want, "recipe": old}))
    recipes.run_one(run, plan, "small_6k", tmp_path, dense)
    assert trained == [run] and model_fingerprint(run_dir) == want
