"""Tests for ume.data.tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from ume.data.text import normalize_text
from ume.data.tokenizer import Tokenizer

TEXTS = [
    normalize_text(t)
    for t in [
        "今天天气很好 let's go to the park",
        "我喜欢 machine learning 和 deep learning",
        "hello world this is a small english corpus",
        "她说 OK 然后走了",
        "the quick brown fox jumps over the lazy dog",
        "你好世界",
    ]
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.train(TEXTS, bpe_size=60, workdir=tmp_path_factory.mktemp("tok"))


def test_layout(tok: Tokenizer) -> None:
    assert tok.id2token(0) == "<blank>" and tok.id2token(1) == "<unk>"
    assert tok.id2token(tok.sos) == "<sos/eos>" and tok.sos == tok.eos == tok.vocab_size - 1
    assert tok.units.count("<unk>") == 1
    chars = [u for u in tok.units[2:] if len(u) == 1 and "\u4e00" <= u <= "\u9fff"]
    assert chars == sorted(chars) and tok.units[2 : 2 + len(chars)] == chars
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'":
        assert c in tok.units or "\u2581" + c in tok.units


def test_round_trip_and_spacing(tok: Tokenizer) -> None:
    for t in [*TEXTS, "天气WORLD好", "ZEBRA QUIZ 2024", "LEARNING你好LEARNING", "X"]:
        ids = tok.encode(t)
        assert tok.UNK not in ids, t
        assert tok.decode(ids) == t
    assert tok.decode(tok.encode("我喜欢MACHINE LEARNING和DEEP")) == "我喜欢MACHINE LEARNING和DEEP"


def test_unknown_char(tok: Tokenizer) -> None:
    ids = tok.encode("你龘好")
    assert ids[1] == Tokenizer.UNK and len(ids) == 3
    assert tok.decode(ids) == "你好"  # <unk> is dropped on decode
    with pytest.raises(IndexError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_save_load(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "t")
    back = Tokenizer.load(tmp_path / "t")
    assert back.units == tok.units
    for t in TEXTS:
        assert back.encode(t) == tok.encode(t)
    (tmp_path / "t" / "bpe.model").unlink()
    with pytest.raises(FileNotFoundError, match="bpe.model"):
        Tokenizer.load(tmp_path / "t")


def test_small_text_reduces_bpe_and_is_deterministic(tmp_path: Path) -> None:
    a = Tokenizer.train(["你好HI"], bpe_size=500, workdir=tmp_path / "a")
    b = Tokenizer.train(["你好HI"], bpe_size=500, workdir=tmp_path / "b")
    assert a.units == b.units and a.vocab_size < 500
    assert a.decode(a.encode("HI你好QUIZ")) == "HI你好QUIZ"
