"""Tests for ume.data.manifest: every bad input gives its own message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ume.data.manifest import (
    DataError,
    Utterance,
    load_audio,
    load_manifest,
    read_text_file,
    write_kaldi_dir,
    write_text_file,
)


def _wav(path: Path, n: int = 1600, sr: int = 16000, channels: int = 1) -> str:
    rng = np.random.default_rng(0)
    data = (0.1 * rng.standard_normal((n, channels))).astype(np.float32)
    sf.write(path, data if channels > 1 else data[:, 0], sr, subtype="PCM_16")
    return str(path)


def _kaldi(d: Path, wav_lines: list[str], text_lines: list[str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("\n".join(wav_lines) + "\n", encoding="utf-8")
    (d / "text").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    return d


def test_kaldi_dir_ok_and_skips(tmp_path: Path) -> None:
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav")
    d = _kaldi(
        tmp_path / "data",
        [f"u1 {a}", f"u2 {b}", f"u3 {tmp_path / 'missing.wav'}", f"u4 {a}", f"u5 {a}", f"u1 {b}"],
        ["u1 你好，World!", "u2 hello", "u3 好", "u4 ，。!", "u6 orphan"],
    )
    (d / "utt2spk").write_text("u1 spk1\nu2 spk2\n", encoding="utf-8")
    (d / "utt2lang").write_text("u2 en\n", encoding="utf-8")
    utts, skipped = load_manifest(d)
    assert [u.key for u in utts] == ["u1", "u2"]
    assert utts[0] == Utterance("u1", a, "你好WORLD", "mix", "spk1", None)
    assert utts[1].lang == "en" and utts[1].text == "HELLO"
    msg = "\n".join(skipped)
    assert "u3: audio file" in msg and "not found" in msg and "wav.scp:3" in msg
    assert "u4: empty text after normalisation" in msg and "text:4" in msg
    assert "u5: in" in msg and "no line in" in msg
    assert "u1: duplicate key" in msg and "wav.scp:6" in msg
    assert "u6: in" in msg and "text:5" in msg
    assert len(skipped) == 5


def test_missing_wav_scp_and_empty(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "text").write_text("u1 hi\n")
    with pytest.raises(DataError, match="without wav.scp or data.list"):
        load_manifest(tmp_path / "d")
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    d = _kaldi(tmp_path / "e", [f"u1 {tmp_path / 'x.wav'}"], ["u1 hi"])
    with pytest.raises(DataError, match="(?s)no usable utterances.*u1: audio file"):
        load_manifest(d)


def test_bad_utt2lang(tmp_path: Path) -> None:
    d = _kaldi(tmp_path / "d", [f"u1 {_wav(tmp_path / 'a.wav')}"], ["u1 hi"])
    (d / "utt2lang").write_text("u1 fr\n")
    with pytest.raises(DataError, match=r"utt2lang:1: language 'fr'"):
        load_manifest(d)


def test_jsonl(tmp_path: Path) -> None:
    a = _wav(tmp_path / "a.wav")
    lines = [
        json.dumps({"key": "u1", "wav": a, "txt": "我们 like it"}, ensure_ascii=False),
        "",
        json.dumps({"key": "u2", "wav": "a.wav", "txt": "ok"}),  # relative to the list's dir
        json.dumps({"key": "u3", "wav": a, "txt": "!!"}),
    ]
    p = tmp_path / "data.list"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    utts, skipped = load_manifest(tmp_path)  # dir with data.list, no wav.scp
    assert [(u.key, u.text, u.lang) for u in utts] == [
        ("u1", "我们LIKE IT", "mix"),
        ("u2", "OK", "en"),
    ]
    assert utts[1].wav == a
    assert len(skipped) == 1 and "u3" in skipped[0] and "data.list:4" in skipped[0]

    p.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.list:2: not valid JSON"):
        load_manifest(p)


def test_require_text_false(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text(f"u1 {_wav(tmp_path / 'a.wav')}\n")
    utts, skipped = load_manifest(d, require_text=False)
    assert utts[0].text == "" and not skipped
    with pytest.raises(DataError, match="missing text file"):
        load_manifest(d)


def test_load_audio_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not a wav file at all" * 10)
    with pytest.raises(DataError, match="cannot read audio .*bad.wav"):
        load_audio(str(bad))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="zero samples"):
        load_audio(str(empty))
    with pytest.raises(DataError, match="not found"):
        load_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(DataError, match="failed with exit code"):
        load_audio("false |")


def test_load_audio_resample_stereo_pipe(tmp_path: Path) -> None:
    w8 = _wav(tmp_path / "a8k.wav", n=8000, sr=8000)
    x = load_audio(w8)
    assert x.dtype == np.float32 and x.shape == (16000,)
    st = tmp_path / "st.wav"
    left = np.full(1000, 0.5, np.float32)
    sf.write(st, np.stack([left, -left * 0.5], axis=1), 16000, subtype="FLOAT")
    y = load_audio(str(st))
    assert y.shape == (1000,) and np.allclose(y, 0.125)
    z = load_audio(f"cat {st} |")
    assert np.array_equal(y, z)


def test_write_and_read_back(tmp_path: Path) -> None:
    a = _wav(tmp_path / "a.wav")
    utts = [Utterance("b", a, "你好", "zh", "s"), Utterance("a", a, "HI THERE", "en")]
    write_kaldi_dir(utts, tmp_path / "out")
    assert (tmp_path / "out" / "text").read_text().splitlines() == ["a HI THERE", "b 你好"]
    assert (tmp_path / "out" / "utt2spk").read_text().splitlines() == ["a a", "b s"]
    back, skipped = load_manifest(tmp_path / "out")
    assert [u.key for u in back] == ["a", "b"] and back[1].lang == "zh" and not skipped

    write_text_file({"z": "", "y": "你好 WORLD"}, tmp_path / "hyp.txt")
    assert (tmp_path / "hyp.txt").read_text() == "y 你好 WORLD\nz\n"
    assert read_text_file(tmp_path / "hyp.txt") == {"y": "你好 WORLD", "z": ""}
    (tmp_path / "dup.txt").write_text("a x\na y\n")
    with pytest.raises(DataError, match=r"dup.txt:2: duplicate key 'a'"):
        read_text_file(tmp_path / "dup.txt")


def test_load_batch_spreads_its_sample_over_the_manifest(tmp_path: Path) -> None:
    """Manifests are key-sorted, i.e. grouped by voice and language: a sample of the first N
    utterances saw one Mandarin voice only (k-means routers, `ume inspect`'s zh/en shares)."""
    from ume.config import FeatureConfig
    from ume.data.loader import load_batch

    wav = _wav(tmp_path / "a.wav")
    keys = [f"a_zh_{i:02d}" for i in range(12)] + [f"b_en_{i:02d}" for i in range(12)]
    texts = [f"{k} 你好" if "_zh_" in k else f"{k} hello" for k in keys]
    d = _kaldi(tmp_path / "data", [f"{k} {wav}" for k in keys], texts)
    utts, batches = load_batch(d, FeatureConfig(), 6)
    assert [u.key for u in utts] == [keys[i] for i in (0, 4, 8, 12, 16, 20)]
    assert {u.lang for u in utts} == {"zh", "en"} and sum(len(b[2]) for b in batches) == 6
    utts, _ = load_batch(d, FeatureConfig(), 100)  # fewer than asked: all of them, in order
    assert [u.key for u in utts] == keys
