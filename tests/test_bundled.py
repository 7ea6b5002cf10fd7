"""Every bundled dense model (and every card-carrying model kept in the repository's models/)
reproduces its model card on a re-synthesised test slice, and all bundled weights together stay
under the 30 MB the package allows (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ume.bundled import DEFAULT, DEMO, MODELS_DIR, bundled_model, bundled_names
from ume.errors import UmeError
from ume.experiment.bundle import card_check, unseen_scores

ROOT = Path(__file__).resolve().parents[1]
REPO_MODELS = ROOT / "models"
CARDED = [MODELS_DIR / n for n in bundled_names()] + sorted(
    p.parent for p in REPO_MODELS.glob("*/*/card.json")
)


@pytest.mark.parametrize("model", CARDED, ids=lambda p: p.name)
def test_bundled_model_reproduces_card(model: Path, tmp_path: Path) -> None:
    if not (model / "card.json").is_file():
        pytest.skip(f"no card for {model}")
    card = json.loads((model / "card.json").read_text())
    got = card_check(model, tmp_path)
    want = card["check"]
    assert got["num_utts"] == want["num_utts"]
    # same audio bytes, same weights, same search: identical up to float summation order
    assert got["mer"] == pytest.approx(want["mer"], abs=0.5)
    assert got["cer_zh"] == pytest.approx(want["cer_zh"], abs=1.0)
    assert got["wer_en"] == pytest.approx(want["wer_en"], abs=1.0)
    assert card["test_mer"] < 100
    assert card["weights_bytes"] == (model / "model.safetensors").stat().st_size


@pytest.mark.parametrize("model", CARDED, ids=lambda p: p.name)
def test_card_unseen_scores_recompute_from_the_shipped_hypotheses(model: Path) -> None:
    card = json.loads((model / "card.json").read_text()) if (model / "card.json").is_file() else {}
    if "unseen" not in card:
        pytest.skip(f"{model.name}'s card scores no unseen subset")
    assert unseen_scores(model, ROOT / card["unseen_refs"]) == card["unseen"]


def test_unseen_scores_count_only_the_subset(tmp_path: Path) -> None:
    (tmp_path / "hyp_test.txt").write_text("a 你好\nb 世界\n", encoding="utf-8")
    (tmp_path / "hyp_dev.txt").write_text("c HELLO\n", encoding="utf-8")
    (tmp_path / "unseen" / "test").mkdir(parents=True)
    (tmp_path / "unseen" / "test" / "text").write_text("b 世间\n", encoding="utf-8")
    # b alone: 1 of 2 characters wrong; a (perfect, not in the subset) does not count; no dev refs
    assert unseen_scores(tmp_path, tmp_path / "unseen") == {"test": {"mer": 50.0, "num_utts": 1}}
    with pytest.raises(UmeError, match="no <split>/text"):
        unseen_scores(tmp_path, tmp_path / "elsewhere")


def test_bundled_weights_fit_the_package_budget() -> None:
    sizes = {n: (MODELS_DIR / n / "model.safetensors").stat().st_size for n in bundled_names()}
    assert sum(sizes.values()) < 30e6, sizes


def test_the_recogniser_and_the_demo_dense_are_bundled() -> None:
    assert bundled_model() == MODELS_DIR / DEFAULT
    card = json.loads((bundled_model() / "card.json").read_text())
    assert card["data_preset"].startswith("xl"), card["data_preset"]  # trained in the xl regime
    assert json.loads((bundled_model(DEMO) / "card.json").read_text())["data_preset"] == "paper"
