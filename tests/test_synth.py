"""Tests for the offline synthetic corpus builder (ume.data.synth / tts / augment)."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ume.data import augment as A
from ume.data import tts
from ume.data.synth import KALDI_FILES, synthesize
from ume.data.synth_plan import plan_corpus
from ume.data.synth_presets import HELDOUT_SPLIT, PRESETS, SPLITS
from ume.data.synth_render import _render_job
from ume.data.text import is_cjk, normalize_text, text_lang
from ume.data.text_sources import (
    FORTUNE_DIR,
    en_sentences_from_entry,
    load_sentences,
    zh_sentences_from_entry,
)
from ume.data.tts import Voice
from ume.errors import UmeError

HAVE_TOOLS = (
    shutil.which("espeak-ng") is not None
    and shutil.which("flite") is not None
    and (FORTUNE_DIR / "chinese").is_file()
    and (FORTUNE_DIR / "fortunes").is_file()
)
needs_tools = pytest.mark.skipif(
    not HAVE_TOOLS, reason="needs espeak-ng, flite, fortunes and fortunes-zh (apt)"
)
ALL_SPLITS = (*SPLITS, HELDOUT_SPLIT)


def _read_map(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, val = line.partition(" ")
        out[key] = val
    return out


def _keys(path: Path) -> list[str]:
    if path.name == "data.list":
        return [json.loads(x)["key"] for x in path.read_text(encoding="utf-8").splitlines()]
    return [line.split(" ", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------
# text extraction (no TTS needed)


def test_zh_sentences_from_entry():
    entry = (
        "\x1b[32m《感遇・其一》\x1b[m\n\x1b[33m作者：张九龄\x1b[m\n"
        "兰叶春葳蕤，桂华秋皎洁。\n欣欣此生意，自尔为佳节。\n"
        "在 Debian 这种规模的项目中，很难避免遇到与你意见不和的人。\n"
        "第3条，规则。\n"
        "\x1b[33m    -- Debian \x1b[32m《行为准则》\x1b[m第一条\x1b[m"
    )
    sents = zh_sentences_from_entry(entry, join_lines=False)
    texts = [s.text for s in sents]
    assert "兰叶春葳蕤桂华秋皎洁" in texts
    assert "欣欣此生意自尔为佳节" in texts
    assert "很难避免遇到与你意见不和的人" in texts
    for s in sents:
        assert all(is_cjk(c) for c in s.text)
        assert normalize_text(s.tts) == s.text
        assert "张九龄" not in s.text and "行为准则" not in s.text and "感遇" not in s.text


def test_zh_wrapped_lines_are_joined():
    entry = "很难避免遇到与你意见不和，或者难以合作\n的人。"
    texts = [s.text for s in zh_sentences_from_entry(entry, join_lines=True)]
    assert texts == ["很难避免遇到与你意见不和", "或者难以合作的人"]


def test_en_sentences_from_entry():
    entry = (
        "A classic is something that everyone wants to have read\n"
        "and nobody wants to read.  Call 555-1234 now!\n"
        "The IBM PC is great.  Mr. Smith went home.  Yes.\n"
        "\t\t-- Mark Twain"
    )
    texts = [s.text for s in en_sentences_from_entry(entry)]
    assert (
        texts[0]
        == "A CLASSIC IS SOMETHING THAT EVERYONE WANTS TO HAVE READ AND NOBODY WANTS TO READ"
    )
    assert "SMITH WENT HOME" in texts
    assert not any("555" in t or "IBM" in t or "TWAIN" in t or t == "YES" for t in texts)


@pytest.mark.skipif(not (FORTUNE_DIR / "chinese").is_file(), reason="needs fortunes-zh")
def test_sentence_pools_are_normalised():
    zh, en = load_sentences()
    assert len(zh) > 5000 and len(en) > 5000
    rnd = random.Random(0)
    for s in rnd.sample(zh, 500):
        assert normalize_text(s.tts) == s.text and all(is_cjk(c) for c in s.text)
    lens = [len(s.text) for s in zh]
    assert np.mean([6 <= n <= 24 for n in lens]) > 0.8
    for s in rnd.sample(en, 500):
        assert normalize_text(s.tts) == s.text
        assert 3 <= len(s.text.split()) <= 16
        assert all(c.isascii() and (c.isalpha() or c in "' ") for c in s.text)


# ------------------------------------------------------------------------------------------
# augmentation


def test_augment_snr_and_peak():
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    for noise in (A.white_noise(16000, rng), A.pink_noise(16000, rng)):
        y = A.add_noise(x, noise, 20.0)
        snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
        assert abs(snr - 20.0) < 0.01
    h = A.synthetic_rir(0.4, 16000, rng)
    assert len(h) == int(0.4 * 16000) and abs(np.sum(h**2) - 1) < 1e-6
    p = A.AugmentParams(noise="babble", snr_db=10, rt60=0.3, lead_s=0.1, trail_s=0.2, peak=0.8)
    y = A.augment(x, p, rng, babble_sources=[x[:4000], x[::-1]])
    assert len(y) == 16000 + int(0.3 * 16000) - 1 + 1600 + 3200
    assert abs(float(np.max(np.abs(y))) - 0.8) < 1e-5


# ------------------------------------------------------------------------------------------
# end-to-end on the tiny preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_a")
    summary = synthesize("tiny", out, seed=0, num_workers=2, progress=False)
    return out, summary


@needs_tools
def test_tiny_layout_and_consistency(tiny):
    out, summary = tiny
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    cfg = PRESETS["tiny"]
    expected = {"train": cfg.n_train, "dev": cfg.n_dev, "test": cfg.n_test + cfg.n_heldout}
    for split in ALL_SPLITS:
        d = out / split
        keys = {f: _keys(d / f) for f in KALDI_FILES if f != "spk2utt"}
        ref = keys["wav.scp"]
        assert ref and ref == sorted(ref) and len(set(ref)) == len(ref)
        assert all(k == ref for k in keys.values()), split
        spk = _read_map(d / "utt2spk")
        assert sorted(u for line in _read_map(d / "spk2utt").values() for u in line.split()) == ref
        for u in ref:
            assert " " not in u and u.startswith(spk[u] + "-")
        assert summary["splits"][split]["utts"] == len(ref)
        if split in expected:
            assert len(ref) == expected[split] - summary["splits"][split]["skipped"]
    assert set(_keys(out / HELDOUT_SPLIT / "text")) <= set(_keys(out / "test" / "text"))
    langs = {lg for s in SPLITS for lg in _read_map(out / s / "utt2lang").values()}
    assert langs == {"zh", "en", "mix"}


@needs_tools
def test_tiny_audio(tiny):
    out, _ = tiny
    for split in ALL_SPLITS:
        durs = _read_map(out / split / "utt2dur")
        for line in (out / split / "data.list").read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            assert Path(item["wav"]).is_absolute()
            info = sf.info(item["wav"])
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert info.frames > 0.3 * 16000
            assert abs(info.frames / 16000 - float(durs[item["key"]])) < 1e-3
        x, _sr = sf.read(item["wav"])
        assert 0.3 < np.max(np.abs(x)) < 1.0


@needs_tools
def test_tiny_transcripts(tiny):
    out, _ = tiny
    for split in ALL_SPLITS:
        text = _read_map(out / split / "text")
        lang = _read_map(out / split / "utt2lang")
        for u, t in text.items():
            assert t and normalize_text(t) == t
            assert text_lang(t) == lang[u]
        data = [json.loads(x) for x in (out / split / "data.list").read_text("utf-8").splitlines()]
        assert all(d["txt"] == text[d["key"]] for d in data)


@needs_tools
def test_no_sentence_shared_between_splits(tiny):
    out, _ = tiny
    units: dict[str, set[str]] = {}
    for split in SPLITS:
        s = set()
        for t in _read_map(out / split / "text").values():
            s.add(t)
            zh = "".join(c for c in t if is_cjk(c))
            if zh:
                s.add(zh)  # the Mandarin sentence of a code-switched utterance
        units[split] = s
    assert not units["train"] & units["dev"]
    assert not units["train"] & units["test"]
    assert not units["dev"] & units["test"]


@needs_tools
def test_heldout_voices_only_in_test(tiny):
    out, summary = tiny
    heldout = set(summary["voices"]["zh_heldout"]) | set(summary["voices"]["en_heldout"])
    seen = set(summary["voices"]["zh"]) | set(summary["voices"]["en"])
    assert heldout and seen and not heldout & seen
    for split in ("train", "dev"):
        assert not heldout & set(summary["splits"][split]["voices"])
        assert not heldout & set(_read_map(out / split / "utt2spk").values())
        assert set(summary["splits"][split]["voices"]) == seen  # every seen voice everywhere
    assert seen <= set(summary["splits"]["test"]["voices"])
    assert set(summary["splits"][HELDOUT_SPLIT]["voices"]) <= heldout
    spk = _read_map(out / HELDOUT_SPLIT / "utt2spk")
    assert spk and set(spk.values()) <= heldout
    test_spk = _read_map(out / "test" / "utt2spk")
    assert {u for u, s in test_spk.items() if s in heldout} == set(spk)


@needs_tools
def test_determinism_and_reuse(tiny, tmp_path, capsys):
    out, summary = tiny
    again = synthesize("tiny", out, seed=0, num_workers=2, progress=False)
    assert again == summary and "reusing" in capsys.readouterr().out

    # a corpus written before a SynthPreset field existed is still complete (the field reads
    # as its default): no silent re-check of every wav
    path = out / "summary.json"
    full = path.read_text(encoding="utf-8")
    old = json.loads(full)
    del old["config"]["train_text_reuse"]
    path.write_text(json.dumps(old), encoding="utf-8")
    try:
        assert synthesize("tiny", out, seed=0, num_workers=2, progress=False) == old
        assert "reusing" in capsys.readouterr().out
    finally:
        path.write_text(full, encoding="utf-8")

    other = tmp_path / "synth_b"
    synthesize("tiny", other, seed=0, num_workers=1, progress=False)
    for split in ALL_SPLITS:
        for f in ("text", "utt2spk", "utt2lang", "utt2dur"):
            assert (out / split / f).read_bytes() == (other / split / f).read_bytes()
    keys = _keys(out / "train" / "text")
    for k in (keys[0], keys[len(keys) // 2], keys[-1]):
        a = (out / "wavs" / "train" / f"{k}.wav").read_bytes()
        b = (other / "wavs" / "train" / f"{k}.wav").read_bytes()
        assert a == b


def test_a_finished_corpus_is_reused_across_rewordings_and_never_deleted(tiny, capsys):
    out, summary = tiny
    path = out / "summary.json"
    full = path.read_text(encoding="utf-8")
    wavs = sorted((out / "wavs" / "train").iterdir())
    try:
        # the preset's description is prose: rewording it keeps the built corpus
        old = json.loads(full)
        old["config"]["description"] = "an older wording"
        path.write_text(json.dumps(old), encoding="utf-8")
        assert synthesize("tiny", out, seed=0, progress=False) == old
        assert "reusing" in capsys.readouterr().out
        # a corpus of another config or seed is refused with a way out, and left as it was
        other = json.loads(full)
        other["config"]["n_train"] += 1
        path.write_text(json.dumps(other), encoding="utf-8")
        with pytest.raises(UmeError, match="already holds a finished corpus.*another --out"):
            synthesize("tiny", out, seed=0, progress=False)
        with pytest.raises(UmeError, match="differs from the 'tiny' corpus at seed 1"):
            synthesize("tiny", out, seed=1, progress=False)
        assert sorted((out / "wavs" / "train").iterdir()) == wavs
        assert json.loads(path.read_text(encoding="utf-8")) == other
    finally:
        path.write_text(full, encoding="utf-8")


@needs_tools
def test_plan_depends_on_seed(tmp_path):
    p0, _ = plan_corpus(PRESETS["tiny"], tmp_path, 0)
    p1, _ = plan_corpus(PRESETS["tiny"], tmp_path, 1)
    assert [p.text for p in p0] != [p.text for p in p1]


@needs_tools
def test_tts_failure_is_reported_not_raised(tmp_path, monkeypatch):
    plans, _ = plan_corpus(PRESETS["tiny"], tmp_path, 0)
    plan = dataclasses.replace(plans[0], babble=[], wav=str(tmp_path / "x.wav"))
    monkeypatch.setattr(tts, "_command", lambda *a, **k: ["false"])  # engine exits with 1
    r = _render_job((plan, False))
    assert r["ok"] is False and "TTS failure" in r["error"]
    assert not (tmp_path / "x.wav").exists()
    with pytest.raises(tts.TTSError):
        tts.render(plan.segments[0][0], "", {})
    assert not tts.voice_available(Voice(id="x", engine="flite", lang="en", name="nosuch"))
    assert not tts.voice_available(Voice(id="x", engine="espeak", lang="en", name="xx-yy+f1"))


@pytest.mark.slow  # plans the 20,000-utterance large preset: minutes on two busy cores
@needs_tools
def test_large_preset_keeps_paper_eval_splits_and_reuses_train_text(tmp_path):
    paper, _ = plan_corpus(PRESETS["paper"], tmp_path, 0)
    large, _ = plan_corpus(PRESETS["large"], tmp_path, 0)

    def held(plans):
        return [(p.uttid, p.text, p.segments, p.aug) for p in plans if p.split != "train"]

    assert held(large) == held(paper)  # one test set: models of both corpora compare directly
    train = [p for p in large if p.split == "train"]
    assert len(train) == PRESETS["large"].n_train
    texts = [p.text for p in train]
    assert len(set(texts)) < len(texts)  # Mandarin sentences repeat...
    eval_texts = {p.text for p in large if p.split != "train"}
    assert not eval_texts & set(texts)  # ...but never a dev/test one
    repeated = {t for t in texts if texts.count(t) > 1}
    spoken = {(p.text, p.segments[0][0].id, p.aug) for p in train if p.text in repeated}
    assert len(spoken) == sum(texts.count(t) for t in repeated)  # each repeat sounds different


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError):
        synthesize("nope", tmp_path)
