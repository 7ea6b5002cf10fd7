"""Tests for the large text pool (ume.data.text_pool), the wide voice set and channels
(ume.data.tts / augment), and the pool planner (ume.data.synth_plan_pool) behind the xl presets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ume.data import augment as A
from ume.data import text_pool as TP
from ume.data import tts
from ume.data.synth import synthesize
from ume.data.synth_plan_pool import _cover, plan_pool_corpus
from ume.data.synth_presets import (
    HELDOUT_SPLIT,
    HELDOUT_SYNTH_SPLIT,
    HELDOUT_TEXT_SPLIT,
    PRESETS,
)
from ume.data.text import is_cjk, normalize_text, text_lang
from ume.data.text_sources import Sentence

HAVE_POOL_SOURCES = all(
    Path(p).exists()
    for p in (
        "/usr/share/doc/debian-handbook/html/zh-CN",
        "/usr/share/debian-reference/index.en.html",
        "/usr/share/games/fortunes/chinese",
    )
) and all(shutil.which(t) for t in ("espeak-ng", "flite", "text2wave"))
needs_pool = pytest.mark.skipif(
    not HAVE_POOL_SOURCES,
    reason="needs debian-handbook, debian-reference-*, fortunes*, festival (scripts/setup.sh)",
)


# ------------------------------------------------------------------------------------------
# text extraction


def test_roff_drops_comments_requests_and_tables():
    src = "\n".join(
        [
            '.\\" Copyright 1999 Somebody. Permission is granted to copy this manual.',
            ".TH LS 1",
            ".SH DESCRIPTION",
            "List information about the files.",
            ".B ls",
            "sorts entries \\fBalphabetically\\fR by default.",
            ".TS",
            "tab(;); l l.",
            "a;b",
            ".TE",
            "",
            "Second paragraph here.",
        ]
    )
    paras = TP._roff_text(src)
    text = " ".join(paras)
    assert "Copyright" not in text and "Permission" not in text  # licence header dropped
    assert "tab(" not in text
    assert any("sorts entries alphabetically by default." in p for p in paras)
    assert paras[-1] == "Second paragraph here."


def test_zh_sentences_read_numbers_keep_code_switch_and_drop_symbols():
    out = TP.zh_sentences_from_paragraph(
        "使用 grep 命令可以搜索文件。版本共有 300 个补丁。路径是 /etc/apt/sources.list 文件。"
    )
    texts = [s.text for s in out]
    assert "使用GREP命令可以搜索文件" in texts  # real code-switching kept
    assert "版本共有三百个补丁" in texts  # the number is read out, in text and TTS
    assert any("三百" in s.tts for s in out)
    assert not any("ETC" in t or "/" in t for t in texts)  # a path is not speakable
    for s in out:
        assert normalize_text(s.tts) == s.text
        assert not any(ch.isdigit() for ch in s.text)


def test_zh_acronyms_are_refused():
    # all-caps words are spelt letter by letter by a TTS engine: not what the transcript says
    assert TP.zh_sentences_from_paragraph("这个 GNU 版本的程序非常好用。") == []


def test_en_sentences_read_numbers_and_drop_options():
    out = TP.en_sentences_from_paragraph(
        "The server keeps 16 copies of each file. Use the --force option to overwrite them. "
        "Version 2.6.32 is required."
    )
    texts = [s.text for s in out]
    assert "THE SERVER KEEPS SIXTEEN COPIES OF EACH FILE" in texts
    assert not any("FORCE" in t for t in texts)
    assert not any("VERSION" in t for t in texts)  # a dotted version cannot be read back


def test_pool_heldout_domain_wins_dedup(monkeypatch):
    shared = "这是一个共享的句子内容。"
    paras = {
        ("manpages", "zh"): [shared, "只在手册页里出现的句子。"],
        ("reference", "zh"): [shared],
        ("manpages", "en"): ["This sentence appears in both places.", "Only in the manual."],
        ("reference", "en"): ["This sentence appears in both places."],
    }
    monkeypatch.setattr(TP, "domain_paragraphs", lambda d, lang: iter(paras[(d, lang)]))
    TP.load_text_pool.cache_clear()
    try:
        pool = TP.load_text_pool(("manpages", "reference"))
    finally:
        TP.load_text_pool.cache_clear()
    assert [s.text for s in pool.sentences("zh", "reference")] == ["这是一个共享的句子内容"]
    assert [s.text for s in pool.sentences("zh", "manpages")] == ["只在手册页里出现的句子"]
    assert [s.text for s in pool.sentences("en", "manpages")] == ["ONLY IN THE MANUAL"]


def test_pool_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(TP, "domain_paragraphs", lambda d, lang: iter(()))
    TP.load_text_pool.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="install the Debian packages"):
            TP.load_text_pool(("kicad",))
    finally:
        TP.load_text_pool.cache_clear()


def test_cover_brings_rare_characters_to_the_minimum():
    sents = [Sentence("甲乙。", "甲乙")] + [Sentence(f"丙{c}。", f"丙{c}") for c in "丁戊己庚"]
    out = _cover(sents, 30, 5, np.random.default_rng(0))
    assert len(out) == 30
    counts = {ch: sum(s.text.count(ch) for s in out) for ch in "甲乙丁戊己庚"}
    assert min(counts.values()) >= 5


# ------------------------------------------------------------------------------------------
# voices and channels


def test_augment_params_fingerprint_is_unchanged_for_old_corpora():
    # corpora planned before speed/channel existed must keep their fingerprint (to_dict)
    d = A.AugmentParams(noise="pink", snr_db=12.0).to_dict()
    assert set(d) == {"noise", "snr_db", "rt60", "lead_s", "trail_s", "peak"}
    assert "channel" in A.AugmentParams(channel="telephone").to_dict()


def test_telephone_channel_removes_wideband_energy():
    sr = 16000
    t = np.arange(sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    y = A.telephone(x, sr)
    assert y.shape == x.shape
    spec = np.abs(np.fft.rfft(y))
    f = np.fft.rfftfreq(len(y), 1 / sr)
    assert spec[(f > 5900) & (f < 6100)].max() < 0.05 * spec[(f > 900) & (f < 1100)].max()


def test_codec_and_speed_and_unknown_channel():
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    assert A.codec(x).shape == x.shape
    assert len(A.speed_perturb(x, 1.1)) == pytest.approx(16000 / 1.1, abs=2)
    with pytest.raises(ValueError, match="unknown channel"):
        A.apply_channel(x, "carrier-pigeon")


def test_wide_voice_set_size_and_heldout_disjoint():
    seen = {v.id for v in tts.WIDE_ZH_VOICES + tts.WIDE_EN_VOICES}
    held = {v.id for v in tts.WIDE_HELDOUT_ZH_VOICES + tts.WIDE_HELDOUT_EN_VOICES}
    assert len(seen) >= 100 and not seen & held
    held_variants = {v.variant for v in tts.WIDE_HELDOUT_ZH_VOICES}
    assert not held_variants & {v.variant for v in tts.WIDE_ZH_VOICES + tts.WIDE_EN_VOICES}
    assert {v.engine for v in tts.FESTIVAL_VOICES} == {"festival"}


@needs_pool
def test_festival_renders():
    v = tts.FESTIVAL_VOICES[0]
    audio = tts.render(v, "A held out synthesiser.", tts.sample_params(v, np.random.default_rng(0)))
    assert audio.dtype == np.float32 and audio.size > 1600


# ------------------------------------------------------------------------------------------
# the xl_tiny corpus


@pytest.fixture(scope="module")
def xl_tiny(tmp_path_factory):
    if not HAVE_POOL_SOURCES:
        pytest.skip("pool sources not installed")
    out = tmp_path_factory.mktemp("xl_tiny")
    return out, synthesize("xl_tiny", out, seed=0, num_workers=2, progress=False)


def _texts(d: Path) -> dict[str, str]:
    out = {}
    for line in (d / "text").read_text(encoding="utf-8").splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out


@pytest.mark.slow
@needs_pool
def test_xl_tiny_has_four_test_splits_that_measure_what_they_say(xl_tiny):
    out, summary = xl_tiny
    cfg = PRESETS["xl_tiny"]
    sizes = {s: summary["splits"][s]["utts"] for s in summary["splits"]}
    assert sizes == {
        "train": cfg.n_train,
        "dev": cfg.n_dev,
        "test": cfg.n_test,
        HELDOUT_SPLIT: cfg.n_heldout,
        HELDOUT_SYNTH_SPLIT: cfg.n_heldout_synth,
        HELDOUT_TEXT_SPLIT: cfg.n_heldout_text,
    }
    train = set(_texts(out / "train").values())
    train_voices = set(summary["splits"]["train"]["voices"])
    # held-out synthesiser: only festival, never in train
    assert {v.split("_")[0] for v in summary["splits"][HELDOUT_SYNTH_SPLIT]["voices"]} == {"fest"}
    assert not any(v.startswith("fest") for v in train_voices)
    # held-out voices: none of them in train or dev
    held = set(summary["splits"][HELDOUT_SPLIT]["voices"])
    assert held and not held & (train_voices | set(summary["splits"]["dev"]["voices"]))
    # held-out text domain: sentences from the reference, none trained on
    held_text = set(_texts(out / HELDOUT_TEXT_SPLIT).values())
    assert held_text and not held_text & train
    pool = TP.load_text_pool(cfg.text_domains)
    ref = {s.text for lang in ("zh", "en") for s in pool.sentences(lang, "reference")}
    assert {t for t in held_text if text_lang(t) != "mix"} <= ref
    # no test-side sentence is trained on
    for split in ("dev", "test", HELDOUT_SPLIT, HELDOUT_SYNTH_SPLIT):
        assert not set(_texts(out / split).values()) & train, split
    assert summary["text_pool"]["heldout_domain"] == "reference"


@pytest.mark.slow
@needs_pool
def test_xl_test_side_does_not_depend_on_train_size(tmp_path):
    cfg = PRESETS["xl_tiny"]
    a, _ = plan_pool_corpus(cfg, tmp_path, 0)
    b, _ = plan_pool_corpus(dataclasses.replace(cfg, n_train=70), tmp_path, 0)

    def test_side(plans):
        return [(p.uttid, p.text, p.aug.to_dict()) for p in plans if p.split != "train"]

    assert test_side(a) == test_side(b)
    assert sum(p.split == "train" for p in b) == 70
    # the text pool cache is written beside the corpus and reused
    assert (tmp_path / "text_pool.json.gz").is_file()


@pytest.mark.slow
@needs_pool
def test_xl_tiny_mix_utterances_switch_voices(xl_tiny):
    out, _ = xl_tiny
    plans, _ = plan_pool_corpus(PRESETS["xl_tiny"], out, 0)
    mixes = [p for p in plans if p.lang == "mix"]
    assert mixes
    for p in mixes:
        assert {v.lang for v, _, _ in p.segments} == {"zh", "en"}
        assert any(is_cjk(c) for c in p.text)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["version"] >= 2


def test_licence_texts_never_reach_the_pool(tmp_path, monkeypatch):
    """Licence texts are reserved for an evaluation: a man page's COPYRIGHT section, a manual's
    licence pages and any paragraph in a licence's words are left out."""
    src = "\n".join(
        [
            ".SH DESCRIPTION",
            "Lists the files in a directory.",
            ".SH COPYRIGHT",
            "You may redistribute copies of this program under the terms of the license.",
            ".SH SEE ALSO",
            "The manual of the shell.",
        ]
    )
    paras = TP._roff_text(src)
    assert "Lists the files in a directory." in paras
    assert "The manual of the shell." in paras
    assert not any("redistribute" in p for p in paras)
    for name in ("gfdl-3.html", "license.html", "legalnotice.html", "copyright.html"):
        (tmp_path / name).write_text("<p>Anyone may copy this text.</p>")
    (tmp_path / "intro.html").write_text(
        "<p>The brush paints soft lines.</p>"
        "<p>This program comes without any warranty of any kind.</p>"
        "<p>本程序是自由软件基金会发布的。</p>"
    )
    monkeypatch.setitem(TP.HTML_MANUALS, "gimp", (tmp_path, tmp_path))
    assert [p.name for p in TP._html_files(tmp_path, "*.html")] == ["intro.html"]
    assert list(TP.domain_paragraphs("gimp", "en")) == ["The brush paints soft lines."]


@pytest.mark.slow
@needs_pool
def test_xl_slices_are_the_full_corpus_utterances(xl_tiny, tmp_path):
    """The demo's trio scores slices of the xl test splits: each slice must be the same
    utterances, text and wav bytes, as the full corpus has (held-out voices included)."""
    from ume.data.synth import preset_splits, synthesize_slices

    out, _ = xl_tiny
    splits = [s for s in preset_splits("xl_tiny") if s.startswith("test")]
    assert len(splits) == 4
    dirs = synthesize_slices("xl_tiny", splits, 3, tmp_path, num_workers=2)
    for split, d in dirs.items():
        part, full = _texts(d), _texts(out / split)
        assert len(part) == 3 and part.items() <= full.items(), split
        for uttid in part:
            wav = f"{uttid}.wav"
            a = next((tmp_path / "wavs").rglob(wav)).read_bytes()
            assert a == next((out / "wavs").rglob(wav)).read_bytes(), uttid
