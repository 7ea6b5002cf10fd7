"""The demo's trio (ume/experiment/trio.py): slices re-synthesised once and reused, every
model's MER recomputable from its hypothesis file, the paired comparisons wired to the right
baselines, and a clear error where the trio's models are not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bench import tiny_pair

import ume.data.synth as synth
from ume.data.manifest import read_text_file
from ume.decode.score import score
from ume.errors import UmeError
from ume.experiment.trio import COMPARISONS, format_trio, missing_models, score_trio


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trio")
    tiny_pair(tmp)
    # dense and dense_continued are one model here: their comparison must be exactly 0
    models = {"dense": tmp / "dense", "dense_continued": tmp / "dense", "ume": tmp / "ume"}
    return tmp, models, score_trio(tmp / "work", 3, models, preset="tiny", workers=1)


def test_trio_scores_every_split_the_preset_has(trio):
    tmp, models, res = trio
    # `tiny` has no held-out synthesiser or text domain: those are skipped, not failed
    assert list(res["splits"]) == ["test", "test_heldout"]
    assert json.loads((tmp / "work" / "trio.json").read_text()) == res
    for split, s in res["splits"].items():
        refs = read_text_file(tmp / "work" / "data" / split / "text")
        assert 0 < len(refs) <= 3 and s["num_utts"] == len(refs)
        for role in models:
            hyps = read_text_file(tmp / "work" / role / f"hyp_{split}.txt")
            assert set(hyps) == set(refs)
            assert s["mer"][role] == round(score(refs, hyps)["mer"], 2)
        assert set(s["vs"]) == {f"{a}_vs_{b}" for a, b in COMPARISONS}
        same = s["vs"]["dense_continued_vs_dense"]
        assert same["rel_change_pct"] == 0.0 and same["rel_ci95_pct"] == [0.0, 0.0]


def test_trio_table_says_what_trained_the_models(trio):
    _, models, res = trio
    table = format_trio(res)
    assert "trained beforehand (not by this demo)" in table
    assert str(models["ume"]) in table and "held-out voices" in table
    assert "+0.00% (+0.00 .. +0.00) tie" in table  # dense_continued vs itself


def test_trio_slices_are_reused(trio, monkeypatch):
    tmp, models, _ = trio

    def no_render(*a, **k):
        raise AssertionError("a finished slice was rendered again")

    monkeypatch.setattr(synth, "_render_all", no_render)
    monkeypatch.setattr(synth, "plan_preset", no_render)
    dirs = synth.synthesize_slices("tiny", ["test", "test_heldout"], 3, tmp / "work" / "data")
    assert all((d / "wav.scp").is_file() for d in dirs.values())


def test_trio_without_its_models_says_where_they_ship(tmp_path: Path):
    models = {"dense": tmp_path / "a", "dense_continued": tmp_path / "a", "ume": tmp_path / "b"}
    assert missing_models(models) == ["dense", "dense_continued", "ume"]
    with pytest.raises(UmeError, match="source checkout"):
        score_trio(tmp_path, 3, models, preset="tiny")
    with pytest.raises(UmeError, match="utts must be > 0"):
        score_trio(tmp_path, 0, {"dense": tmp_path}, preset="tiny")
    with pytest.raises(UmeError, match="needs the roles dense_continued, ume"):
        score_trio(tmp_path, 3, {"dense": tmp_path}, preset="tiny")


def test_demo_refuses_a_negative_trio_size_before_any_work(tmp_path: Path, capsys):
    from ume.cli import main

    assert main(["demo", "--workdir", str(tmp_path / "w"), "--trio-utts", "-1"]) == 2
    assert "--trio-utts must be >= 0 (0 skips the trio), got -1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
