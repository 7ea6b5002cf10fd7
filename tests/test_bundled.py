"""The bundled dense model reproduces its model card on a re-synthesised test slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ume.experiment.bundle import card_check

BUNDLED = Path(__file__).resolve().parent.parent / "ume" / "models" / "dense_paper"


@pytest.mark.skipif(not (BUNDLED / "card.json").is_file(), reason="no bundled model")
def test_bundled_model_reproduces_card(tmp_path: Path) -> None:
    card = json.loads((BUNDLED / "card.json").read_text())
    got = card_check(BUNDLED, tmp_path)
    want = card["check"]
    assert got["num_utts"] == want["num_utts"]
    # same audio bytes, same weights, same search: identical up to float summation order
    assert got["mer"] == pytest.approx(want["mer"], abs=0.5)
    assert got["cer_zh"] == pytest.approx(want["cer_zh"], abs=1.0)
    assert got["wer_en"] == pytest.approx(want["wer_en"], abs=1.0)
    assert card["test_mer"] < 100 and card["weights_bytes"] < 20e6
