"""Offline synthetic bilingual (Mandarin + English + code-switched) corpus builder.

Real text is read at run time from the Debian ``fortunes`` / ``fortunes-zh`` packages
(``/usr/share/games/fortunes``), spoken by several voices of two offline TTS engines
(``espeak-ng`` and ``flite``, see :mod:`ume.data.tts`), augmented with noise / reverberation
(:mod:`ume.data.augment`) and written as Kaldi-style data directories plus a wenet-style
``data.list``. Nothing is downloaded.

Layout of ``out_dir``::

    train/ dev/ test/ test_heldout/     wav.scp text utt2spk spk2utt utt2lang utt2dur data.list
    wavs/<split>/<uttid>.wav            16 kHz mono 16-bit PCM
    summary.json                        written last; its presence marks a complete corpus

* Sentences are deduplicated (on normalised text), shuffled with ``seed`` and assigned to the
  splits so that no sentence appears in two splits.
* ``test`` additionally contains utterances spoken by held-out voices (never used in train/dev);
  these are also written on their own as ``test_heldout``.
* ~10% of utterances are code-switched: a Mandarin sentence followed by a 2-4 word English
  phrase, each spoken by a voice of its own language and concatenated.
* Utterance ids are ``<voiceid>-<split>-<index:06d>`` (the voice id is the speaker id; for
  code-switched utterances it is the Mandarin voice). All files are sorted by utterance id.
* Deterministic: every random choice of an utterance comes from a generator seeded with
  ``(seed, split, index)``, so the same seed gives identical text files and wav bytes,
  whatever ``num_workers`` is.

Example:
    >>> from ume.data.synth import synthesize
    >>> summary = synthesize("tiny", "/tmp/ume_tiny", seed=0, num_workers=2)  # doctest: +SKIP
    >>> summary["splits"]["train"]["utts"], sorted(summary["splits"])  # doctest: +SKIP
    (40, ['dev', 'test', 'test_heldout', 'train'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ume.atomic import atomic_path, atomic_write_text
from ume.data.augment import AugmentParams, augment, sample_augment_params
from ume.data.text import is_cjk, normalize_text, text_lang
from ume.data.tts import (
    ENGLISH_VOICES,
    ESPEAK_ZH_VOICES,
    HELDOUT_EN_VOICES,
    HELDOUT_ZH_VOICES,
    SAMPLE_RATE,
    TTSError,
    Voice,
    render,
    sample_params,
    voice_available,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# Mandarin sentences are restricted to those written with the ZH_CHAR_VOCAB most frequent
# characters of the text pool. With all 5,800 characters a 6 h corpus sees each only ~8 times
# and the model cannot learn most of them; 1,200 characters keep 7,800 sentences (enough for
# the paper preset) and ~30 occurrences per character. The same for every preset, so test
# sentences stay disjoint from every preset's train sentences.
ZH_CHAR_VOCAB = 1200
FORTUNE_DIR = Path("/usr/share/games/fortunes")
ZH_FILES = ("chinese", "tang300", "song100")
# English fortune files that are not (mostly) English prose.
EN_EXCLUDE = frozenset({"ascii-art", "translate-me", *ZH_FILES})
SPLITS = ("train", "dev", "test")
HELDOUT_SPLIT = "test_heldout"
_SPLIT_CODE = {"train": 0, "dev": 1, "test": 2}
KALDI_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2lang", "utt2dur", "data.list")


# --------------------------------------------------------------------------------------------
# presets


@dataclass(frozen=True)
class SynthPreset:
    """Size and composition of a synthetic corpus.

    Attributes:
        name: preset name.
        n_train / n_dev / n_test: utterances per split (seen voices).
        n_heldout: extra test utterances spoken by held-out voices (also ``test_heldout/``).
        p_zh / p_en / p_mix: language proportions (mix = code-switched zh + en phrase).
        n_zh_voices / n_en_voices: size of the seen voice pools (``None``: all of them); small
            presets use fewer voices so that every voice occurs in every split.
        train_text_reuse: when the text pool runs out, the train split cycles through its own
            sentences again (each repeat with another voice and augmentation); dev and test
            sentences are never reused, and stay those of a preset with the same split sizes.
    """

    name: str
    n_train: int
    n_dev: int
    n_test: int
    n_heldout: int
    p_zh: float = 0.45
    p_en: float = 0.45
    p_mix: float = 0.10
    n_zh_voices: int | None = None
    n_en_voices: int | None = None
    train_text_reuse: bool = False
    description: str = ""

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        "tiny", 40, 10, 10, 4, n_zh_voices=2, n_en_voices=3, description="unit tests, seconds"
    ),
    "quick": SynthPreset("quick", 1120, 150, 150, 60, description="~1 h train audio"),
    "paper": SynthPreset("paper", 7000, 400, 400, 120, description=">= 6 h train audio"),
    # Same dev/test/held-out utterances as "paper" (same sizes and seed), ~2.9x the train
    # audio: every remaining English sentence is new, Mandarin ones repeat ~1.5x in other voices
    # (the 1,200-character pool holds 7,834 sentences). See docs/RESULTS.md, "large" preset.
    "large": SynthPreset(
        "large", 20000, 400, 400, 120, train_text_reuse=True, description="~17.5 h train audio"
    ),
}


# --------------------------------------------------------------------------------------------
# text sources

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BOX = re.compile(r"[\u2500-\u257f]")
_ZH_DELIM = "。！？；，、：:;,.!?…"
_ZH_SPLIT = re.compile(f"[{re.escape(_ZH_DELIM)}]+")
ZH_MIN_CHARS, ZH_TARGET_CHARS, ZH_MAX_CHARS = 6, 12, 24
EN_MIN_WORDS, EN_MAX_WORDS = 3, 16
# Ideographs of the text sources that espeak-ng 1.51 (cmn-latn-pinyin) has no reading for.
_ESPEAK_UNKNOWN_HANZI = frozenset("塰忄衤")
_EN_ALLOWED = re.compile(r"^[A-Za-z' ,.;:!?\"()\-]+$")
_EN_SENT_SPLIT = re.compile(r"(?<=[.!?;:])[\"')]*\s+")
_EN_NORM_OK = re.compile(r"^[A-Z']+( [A-Z']+)*$")
_ABBREV = frozenset(
    "mr mrs ms dr st jr sr vs etc wm prof gen col capt lt sgt rev hon inc co ltd no vol ch fig "
    "mt ft ave dept est govt univ jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


@dataclass(frozen=True)
class Sentence:
    """A sentence as given to the TTS engine (`tts`, may keep punctuation for prosody) and its
    normalised transcript (`text`)."""

    tts: str
    text: str


def read_fortune_file(path: str | Path) -> list[str]:
    """Entries of a fortune file (separated by lines containing only ``%``), ANSI-stripped."""
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    raw = _ANSI.sub("", raw).replace("\r\n", "\n")
    entries, cur = [], []
    for line in raw.split("\n"):
        if line.strip() == "%":
            entries.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    entries.append("\n".join(cur))
    return [e for e in entries if e.strip()]


def _is_hanzi_piece(piece: str) -> bool:
    """True if `piece`, ignoring punctuation and spaces, is non-empty and only CJK ideographs
    (so the transcript equals exactly what the TTS engine reads)."""
    n = 0
    for ch in unicodedata.normalize("NFKC", piece):
        cat = unicodedata.category(ch)
        if cat[0] in "PZ" or ch.isspace():
            continue
        if not is_cjk(ch) or not (0x4E00 <= ord(ch) <= 0x9FFF):
            return False
        n += 1
    return n > 0


def _zh_clean_piece(piece: str) -> str:
    """Remove punctuation/quotes/spaces around and inside a clause (keeps ideographs)."""
    piece = unicodedata.normalize("NFKC", piece)
    return "".join(ch for ch in piece if is_cjk(ch))


def _zh_paragraphs(entry: str, join_lines: bool) -> list[str]:
    """Split an entry into paragraphs of text lines; drops attributions, titles, tables."""
    paras, cur = [], []
    for line in entry.split("\n"):
        s = line.strip()
        drop = (
            not s
            or s.startswith(("--", "——", "《", "〈", "作者", "题目", "题目:", "出处"))
            or _BOX.search(s) is not None
        )
        if drop:
            if cur:
                paras.append(cur)
                cur = []
            continue
        cur.append(s)
    if cur:
        paras.append(cur)
    sep = "" if join_lines else "\n"
    return [sep.join(p) for p in paras]


def zh_sentences_from_entry(entry: str, join_lines: bool = True) -> list[Sentence]:
    """Mandarin sentences of one fortune entry.

    Paragraphs are split into clauses on ``。！？；，、：`` (and newlines when `join_lines` is
    false, i.e. for poems); clauses containing anything but Hanzi (Latin letters, digits,
    symbols) break the sequence; adjacent pure-Hanzi clauses are merged while the sentence is
    shorter than 6 characters or the merge stays within 12, never beyond 24 characters.
    """
    out: list[Sentence] = []
    for para in _zh_paragraphs(entry, join_lines):
        runs: list[list[str]] = [[]]
        for piece in re.split(f"[{re.escape(_ZH_DELIM)}\n]+", para):
            if not piece.strip():
                continue
            if _is_hanzi_piece(piece):
                runs[-1].append(_zh_clean_piece(piece))
            elif runs[-1]:
                runs.append([])
        for run in runs:
            buf: list[str] = []
            for piece in run:
                cur = sum(map(len, buf))
                if buf and not (
                    (cur < ZH_MIN_CHARS or cur + len(piece) <= ZH_TARGET_CHARS)
                    and cur + len(piece) <= ZH_MAX_CHARS
                ):
                    out.append(_zh_sentence(buf))
                    buf = []
                buf.append(piece)
            if buf:
                out.append(_zh_sentence(buf))
    return [
        s
        for s in out
        if 4 <= len(s.text) <= ZH_MAX_CHARS and not _ESPEAK_UNKNOWN_HANZI.intersection(s.text)
    ]


def _zh_sentence(pieces: list[str]) -> Sentence:
    # pieces are NFKC-normalised pure ideographs, so this equals normalize_text(tts)
    return Sentence(tts="，".join(pieces) + "。", text="".join(pieces))


def en_sentences_from_entry(entry: str) -> list[Sentence]:
    """English sentences of one fortune entry (3-16 words, letters/apostrophes only).

    Attribution lines (``-- Author``) are dropped; sentences with digits, symbols, acronyms /
    all-caps words (which espeak spells out), dotted abbreviations or stray single letters are
    rejected so that the transcript matches what the TTS engine says.
    """
    lines = [ln for ln in entry.split("\n") if not ln.strip().startswith("--")]
    body = " ".join(ln.strip() for ln in lines)
    body = re.sub(r"\s*--+\s*", ", ", body)
    body = re.sub(r"\s+", " ", body).strip()
    out = []
    for sent in _EN_SENT_SPLIT.split(body):
        s = _en_clean(sent)
        if s is not None:
            out.append(s)
    return out


def _en_clean(sent: str) -> Sentence | None:
    s = sent.strip()
    s = re.sub(r"^[^A-Za-z]+", "", s)  # leading quotes, dots, dashes
    s = re.sub(r"[\"()]+", " ", s)
    s = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s+", " ", s)).strip()
    s = re.sub(r"[,;:]+$", ".", s)
    if not s or not _EN_ALLOWED.match(s):
        return None
    if re.search(r"\b[A-Z]{2,}", s) or re.search(r"[A-Za-z]\.[A-Za-z]", s):
        return None
    words = re.findall(r"[A-Za-z']+", s)
    if not (EN_MIN_WORDS <= len(words) <= EN_MAX_WORDS):
        return None
    if words[-1].lower().strip("'") in _ABBREV:
        return None
    if any(len(w) == 1 and w not in ("a", "A", "I", "O") for w in words):
        return None
    if any(w.strip("'") == "" for w in words):
        return None
    # equals normalize_text(s) for this ASCII alphabet (checked in the tests), but much faster
    text = " ".join(w.strip("'").upper() for w in words if w.strip("'"))
    n = len(text.split())
    if not (EN_MIN_WORDS <= n <= EN_MAX_WORDS) or not _EN_NORM_OK.match(text):
        return None
    return Sentence(tts=s, text=text)


def _dedup(sents: Iterable[Sentence]) -> list[Sentence]:
    seen: set[str] = set()
    out = []
    for s in sents:
        if s.text and s.text not in seen:
            seen.add(s.text)
            out.append(s)
    return out


def english_fortune_files(fortune_dir: str | Path = FORTUNE_DIR) -> list[Path]:
    """English fortune files present in `fortune_dir` (no ``.dat``/``.u8``, no ``off/``)."""
    d = Path(fortune_dir)
    if not d.is_dir():
        return []
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and p.name not in EN_EXCLUDE
    )


@cache
def load_sentences(fortune_dir: str = str(FORTUNE_DIR)) -> tuple[list[Sentence], list[Sentence]]:
    """All deduplicated (zh, en) sentences, in file order (deterministic).

    Raises:
        RuntimeError: if the fortune files are missing (install ``fortunes`` ``fortunes-zh``).
    """
    d = Path(fortune_dir)
    zh: list[Sentence] = []
    for name in ZH_FILES:
        p = d / name
        if not p.is_file():
            logger.warning("missing Mandarin text source %s", p)
            continue
        for entry in read_fortune_file(p):
            zh.extend(zh_sentences_from_entry(entry, join_lines=(name == "chinese")))
    en: list[Sentence] = []
    for p in english_fortune_files(d):
        for entry in read_fortune_file(p):
            en.extend(en_sentences_from_entry(entry))
    zh, en = _dedup(zh), _dedup(en)
    if not zh or not en:
        raise RuntimeError(
            f"no {'Mandarin' if not zh else 'English'} text found in {d}: "
            "install the Debian packages 'fortunes' and 'fortunes-zh'"
        )
    return zh, en


def restrict_zh_vocab(sents: list[Sentence], n_chars: int) -> list[Sentence]:
    """Keep sentences whose characters are all among the `n_chars` most frequent ones
    (frequency over `sents`; ties broken by code point, so the result is deterministic)."""
    counts = Counter(ch for s in sents for ch in s.text)
    ranked = sorted(counts, key=lambda ch: (-counts[ch], ch))[:n_chars]
    vocab = set(ranked)
    return [s for s in sents if set(s.text) <= vocab]


# --------------------------------------------------------------------------------------------
# planning


@dataclass
class UttPlan:
    """Everything needed to render one utterance (picklable; no randomness left)."""

    uttid: str
    split: str
    index: int
    lang: str  # zh | en | mix
    text: str  # normalised transcript
    speaker: str
    heldout: bool
    segments: list[tuple[Voice, str, dict]]  # (voice, tts text, tts params)
    gap_s: float
    aug: AugmentParams
    babble: list[tuple[Voice, str, dict]] = field(default_factory=list)
    wav: str = ""
    seed: tuple[int, ...] = ()


def _lang_counts(n: int, preset: SynthPreset) -> dict[str, int]:
    n_mix = int(round(n * preset.p_mix))
    n_zh = int(round(n * preset.p_zh))
    n_zh = min(n_zh, n - n_mix)
    return {"zh": n_zh, "en": n - n_zh - n_mix, "mix": n_mix}


def _voice_cycle(pool: Sequence[Voice], count: int, rng: np.random.Generator) -> list[Voice]:
    """`count` voices as concatenated random permutations of `pool` (balanced, and every voice
    occurs once `count` >= len(pool))."""
    out: list[Voice] = []
    while len(out) < count:
        out.extend(pool[i] for i in rng.permutation(len(pool)))
    return out[:count]


def voice_pools(preset: SynthPreset) -> dict[str, list[Voice]]:
    """Available voices by role: ``zh``, ``en`` (seen) and ``zh_heldout``, ``en_heldout``."""
    pools = {
        "zh": list(ESPEAK_ZH_VOICES[: preset.n_zh_voices]),
        "en": list(ENGLISH_VOICES[: preset.n_en_voices]),
        "zh_heldout": list(HELDOUT_ZH_VOICES),
        "en_heldout": list(HELDOUT_EN_VOICES),
    }
    for role, voices in pools.items():
        ok = [v for v in voices if voice_available(v)]
        for v in voices:
            if v not in ok:
                logger.warning("voice %s (%s %s) not available: skipped", v.id, v.engine, v.name)
        if not ok:
            raise RuntimeError(
                f"no {role} voice available: install espeak-ng (and flite) with their voices"
            )
        pools[role] = ok
    return pools


def _en_phrase(sent: Sentence, rng: np.random.Generator) -> Sentence:
    """2-4 consecutive words of an English sentence."""
    words = [w.strip("'") for w in re.findall(r"[A-Za-z']+", sent.tts)]
    words = [w for w in words if w]
    k = int(rng.integers(2, 5))
    k = min(k, len(words))
    start = int(rng.integers(0, len(words) - k + 1))
    tts = " ".join(words[start : start + k])
    return Sentence(tts=tts, text=normalize_text(tts))


def _cycled(items: list[Sentence], n: int) -> list[Sentence]:
    """`items` repeated in order up to length `n` (unchanged when already long enough)."""
    reps = -(-n // len(items))
    return (items * reps)[:n]


def plan_corpus(preset: SynthPreset, out_dir: Path, seed: int) -> tuple[list[UttPlan], dict]:
    """Assign sentences, voices and all random parameters to every utterance."""
    zh_all, en_all = load_sentences()
    zh_all = restrict_zh_vocab(zh_all, ZH_CHAR_VOCAB)
    pools = voice_pools(preset)
    rng = np.random.default_rng([seed, 1234])
    zh_order = [zh_all[i] for i in rng.permutation(len(zh_all))]
    en_order = [en_all[i] for i in rng.permutation(len(en_all))]
    babble_voices = pools["zh"] + pools["en"]

    need = {"zh": 0, "en": 0}
    train_need = {"zh": 0, "en": 0}
    layout: dict[str, list[tuple[str, bool]]] = {}
    for split in ("test", "dev", "train"):
        slots = []
        counts = _lang_counts(preset.split_size(split), preset)
        for lang, c in counts.items():
            slots += [(lang, False)] * c
        if split == "test":
            for lang, c in _lang_counts(preset.n_heldout, preset).items():
                slots += [(lang, True)] * c
        layout[split] = slots
        for lang, _held in slots:
            need["zh"] += lang in ("zh", "mix")
            need["en"] += lang in ("en", "mix")
            if split == "train":
                train_need["zh"] += lang in ("zh", "mix")
                train_need["en"] += lang in ("en", "mix")
    if preset.train_text_reuse:  # train may repeat, but needs at least one sentence of each
        need = {k: v - train_need[k] + 1 for k, v in need.items()}
    if need["zh"] > len(zh_order) or need["en"] > len(en_order):
        raise ValueError(
            f"preset {preset.name!r} needs {need['zh']} zh / {need['en']} en sentences, "
            f"only {len(zh_order)} / {len(en_order)} available"
        )

    plans: list[UttPlan] = []
    zi = ei = 0
    for split in ("test", "dev", "train"):
        code = _SPLIT_CODE[split]
        srng = np.random.default_rng([seed, code, 777])
        slots = [layout[split][i] for i in srng.permutation(len(layout[split]))]
        n_zh_s = sum(lang in ("zh", "mix") for lang, _ in slots)
        n_en_s = sum(lang in ("en", "mix") for lang, _ in slots)
        zh_s, en_s = zh_order[zi : zi + n_zh_s], en_order[ei : ei + n_en_s]
        if split == "train" and preset.train_text_reuse:
            zh_s, en_s = _cycled(zh_s, n_zh_s), _cycled(en_s, n_en_s)
        zi, ei = zi + n_zh_s, ei + n_en_s
        cycles = {}
        for role in ("zh", "en", "zh_heldout", "en_heldout"):
            lang = role.split("_")[0]
            held = role.endswith("heldout")
            count = sum((lg == lang or lg == "mix") and h == held for lg, h in slots)
            cycles[role] = iter(_voice_cycle(pools[role], count, srng))
        zh_it, en_it = iter(zh_s), iter(en_s)
        split_texts = zh_s + en_s
        for index, (lang, held) in enumerate(slots):
            urng = np.random.default_rng([seed, code, index])
            suffix = "_heldout" if held else ""
            segs: list[tuple[Voice, str, dict]] = []
            if lang in ("zh", "mix"):
                v = next(cycles["zh" + suffix])
                s = next(zh_it)
                segs.append((v, s.tts, sample_params(v, urng)))
                text = s.text
            if lang in ("en", "mix"):
                v = next(cycles["en" + suffix])
                s = next(en_it)
                if lang == "mix":
                    s = _en_phrase(s, urng)
                    text = normalize_text(text + " " + s.text)
                else:
                    text = s.text
                segs.append((v, s.tts, sample_params(v, urng)))
            gap = round(float(urng.uniform(0.05, 0.25)), 3)
            aug = sample_augment_params(urng)
            babble = []
            if aug.noise == "babble":
                for _ in range(int(urng.integers(3, 6))):
                    bv = babble_voices[int(urng.integers(len(babble_voices)))]
                    bt = split_texts[int(urng.integers(len(split_texts)))]
                    babble.append((bv, bt.tts, sample_params(bv, urng)))
            if text_lang(text) != lang:  # cannot happen with the filters above; fail fast
                raise AssertionError(f"planned {lang} utterance has transcript {text!r}")
            speaker = segs[0][0].id
            uttid = f"{speaker}-{split}-{index:06d}"
            plans.append(
                UttPlan(
                    uttid=uttid,
                    split=split,
                    index=index,
                    lang=lang,
                    text=text,
                    speaker=speaker,
                    heldout=held,
                    segments=segs,
                    gap_s=gap,
                    aug=aug,
                    babble=babble,
                    wav=str(out_dir / "wavs" / split / f"{uttid}.wav"),
                    seed=(seed, code, index, 1),
                )
            )
    info = {
        "text_pool": {"zh": len(zh_all), "en": len(en_all)},
        "voices": {role: [v.id for v in vs] for role, vs in pools.items()},
    }
    return plans, info


# --------------------------------------------------------------------------------------------
# rendering (runs in worker processes)


def render_utterance(plan: UttPlan) -> np.ndarray:
    """TTS every segment, concatenate (with a gap), then augment. Raises TTSError."""
    parts = []
    gap = np.zeros(int(round(plan.gap_s * SAMPLE_RATE)), dtype=np.float32)
    for i, (voice, text, params) in enumerate(plan.segments):
        if i:
            parts.append(gap)
        parts.append(render(voice, text, params))
    speech = np.concatenate(parts)
    babble = []
    for voice, text, params in plan.babble:
        try:
            babble.append(render(voice, text, params))
        except TTSError:  # babble is only noise: fall back to fewer talkers / pink noise
            continue
    rng = np.random.default_rng(list(plan.seed))
    return augment(speech, plan.aug, rng, SAMPLE_RATE, babble)


def _render_job(job: tuple[UttPlan, bool]) -> dict:
    """Worker: render one utterance to its wav file; never raises."""
    plan, reuse = job
    try:
        if reuse and os.path.isfile(plan.wav):
            info = sf.info(plan.wav)
            if info.samplerate == SAMPLE_RATE and info.frames > 0:
                return {"uttid": plan.uttid, "ok": True, "dur": info.frames / SAMPLE_RATE}
        audio = render_utterance(plan)
        with atomic_path(plan.wav) as tmp:
            sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return {"uttid": plan.uttid, "ok": True, "dur": len(audio) / SAMPLE_RATE}
    except TTSError as e:
        return {"uttid": plan.uttid, "ok": False, "error": f"TTS failure: {e}"}
    except Exception as e:  # never let one utterance kill the run
        return {"uttid": plan.uttid, "ok": False, "error": f"{type(e).__name__}: {e}"}


# --------------------------------------------------------------------------------------------
# output


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_kaldi_dir(d: Path, utts: Sequence[tuple[UttPlan, float]]) -> None:
    """Write wav.scp, text, utt2spk, spk2utt, utt2lang, utt2dur, data.list (sorted by uttid)."""
    d.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts, key=lambda u: u[0].uttid)
    _write_lines(d / "wav.scp", (f"{p.uttid} {p.wav}" for p, _ in utts))
    _write_lines(d / "text", (f"{p.uttid} {p.text}" for p, _ in utts))
    _write_lines(d / "utt2spk", (f"{p.uttid} {p.speaker}" for p, _ in utts))
    _write_lines(d / "utt2lang", (f"{p.uttid} {p.lang}" for p, _ in utts))
    _write_lines(d / "utt2dur", (f"{p.uttid} {dur:.3f}" for p, dur in utts))
    spk2utt: dict[str, list[str]] = {}
    for p, _ in utts:
        spk2utt.setdefault(p.speaker, []).append(p.uttid)
    _write_lines(d / "spk2utt", (f"{s} {' '.join(u)}" for s, u in sorted(spk2utt.items())))
    _write_lines(
        d / "data.list",
        (
            json.dumps({"key": p.uttid, "wav": p.wav, "txt": p.text}, ensure_ascii=False)
            for p, _ in utts
        ),
    )


def _split_summary(utts: Sequence[tuple[UttPlan, float]], skipped: int) -> dict:
    dur = [d for _, d in utts]
    return {
        "utts": len(utts),
        "hours": round(sum(dur) / 3600, 4),
        "mean_dur_s": round(float(np.mean(dur)), 3) if dur else 0.0,
        "langs": dict(sorted(Counter(p.lang for p, _ in utts).items())),
        "voices": sorted({v.id for p, _ in utts for v, _, _ in p.segments}),
        "speakers": len({p.speaker for p, _ in utts}),
        "skipped": skipped,
    }


def _fingerprint(plans: Sequence[UttPlan]) -> str:
    """Hash of everything that determines the audio of every utterance."""
    h = hashlib.sha256()
    for p in plans:
        segs = [(v.id, v.name, t, prm) for v, t, prm in p.segments + p.babble]
        rec = [p.uttid, p.wav, p.text, segs, p.gap_s, p.aug.to_dict(), list(p.seed)]
        h.update(json.dumps(rec, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()


_PRESET_DEFAULTS = {f.name: f.default for f in fields(SynthPreset) if f.default is not MISSING}


def _complete_summary(out_dir: Path, cfg: SynthPreset, seed: int) -> dict | None:
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # fields added to SynthPreset after a corpus was written read as their defaults
    stored = {**_PRESET_DEFAULTS, **(summary.get("config") or {})}
    if (
        summary.get("preset") != cfg.name
        or stored != asdict(cfg)
        or summary.get("seed") != seed
        or summary.get("version") != FORMAT_VERSION
    ):
        return None
    for split in (*SPLITS, HELDOUT_SPLIT):
        if not all((out_dir / split / f).is_file() for f in KALDI_FILES):
            return None
    return summary


MAX_FAILURE_RATE = 0.02  # more failed renders than this means a broken TTS setup, not bad luck


def _check_failure_rate(plans: Sequence[UttPlan], results: dict, max_rate: float) -> None:
    """Raise RuntimeError (with the first errors) if too many utterances failed to render."""
    failed = [(p.uttid, results[p.uttid]["error"]) for p in plans if not results[p.uttid]["ok"]]
    if plans and len(failed) / len(plans) > max_rate:
        shown = "\n  ".join(f"{k}: {e}" for k, e in failed[:5])
        raise RuntimeError(
            f"{len(failed)} of {len(plans)} utterances failed to render "
            f"({len(failed) / len(plans):.1%} > {max_rate:.0%}); first errors:\n  {shown}\n"
            "check the TTS engines (espeak-ng, flite) and voices, then rerun"
        )


def synthesize(
    preset: str,
    out_dir: str | Path,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    max_failure_rate: float = MAX_FAILURE_RATE,
) -> dict:
    """Build (or reuse) a synthetic bilingual corpus in `out_dir`.

    Args:
        preset: a key of :data:`PRESETS` (``tiny``, ``quick``, ``paper``).
        out_dir: output directory (created); see the module docstring for the layout.
        seed: master seed; the same seed gives identical transcripts and wav bytes.
        num_workers: TTS/augmentation processes (``<= 1``: run in this process).
        progress: show a tqdm progress bar.
        max_failure_rate: fraction of utterances that may fail to render (skipped and
            counted); above it the run raises RuntimeError with the first errors and writes
            no summary (so a rerun does not mistake the corpus for complete).

    Returns:
        The summary dict (also written to ``out_dir/summary.json``): preset, seed, per split
        (train, dev, test, test_heldout) ``utts``, ``hours``, ``langs``, ``voices``,
        ``skipped``; voice pools; text pool sizes; elapsed time. If `out_dir` already holds a
        complete corpus for the same preset and seed, that summary is returned without work.

    Example:
        >>> s = synthesize("tiny", "/tmp/ume_tiny", seed=0)  # doctest: +SKIP
        >>> s["splits"]["test_heldout"]["voices"]  # doctest: +SKIP
        ['esp_cmn_f4', 'esp_cmn_m5', 'esp_en-gb-x-rp_f4', 'flite_slt']
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = PRESETS[preset]
    out = Path(out_dir).expanduser().resolve()
    done = _complete_summary(out, cfg, seed)
    if done is not None:
        print(f"[synth] {out} already holds the {preset!r} corpus (seed {seed}): reusing it")
        return done

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    plans, info = plan_corpus(cfg, out, seed)
    # Resuming an interrupted run reuses finished wavs, but only if the plan is identical.
    state_path = out / ".synth_state.json"
    state = {"preset": preset, "seed": seed, "version": FORMAT_VERSION, "plan": _fingerprint(plans)}
    reuse = False
    if state_path.is_file():
        try:
            reuse = json.loads(state_path.read_text(encoding="utf-8")) == state
        except (OSError, ValueError):
            reuse = False
    (out / "summary.json").unlink(missing_ok=True)
    if not reuse and (out / "wavs").is_dir():  # stale audio: remove only what we created
        shutil.rmtree(out / "wavs")
    state_path.write_text(json.dumps(state), encoding="utf-8")
    for split in SPLITS:
        (out / "wavs" / split).mkdir(parents=True, exist_ok=True)

    jobs = [(p, reuse) for p in plans]
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc=f"synth {preset}", unit="utt", disable=not progress)
    if num_workers <= 1:
        for job in jobs:
            r = _render_job(job)
            results[r["uttid"]] = r
            bar.update()
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with mp.get_context(method).Pool(num_workers) as pool:
            for r in pool.imap_unordered(_render_job, jobs, chunksize=4):
                results[r["uttid"]] = r
                bar.update()
    bar.close()

    failures = Counter()
    by_split: dict[str, list[tuple[UttPlan, float]]] = {s: [] for s in (*SPLITS, HELDOUT_SPLIT)}
    for p in plans:
        r = results[p.uttid]
        if not r["ok"]:
            failures[p.split] += 1
            if p.heldout:
                failures[HELDOUT_SPLIT] += 1
            logger.warning("skipping %s (%r): %s", p.uttid, p.text, r["error"])
            continue
        by_split[p.split].append((p, r["dur"]))
        if p.heldout:
            by_split[HELDOUT_SPLIT].append((p, r["dur"]))
    _check_failure_rate(plans, results, max_failure_rate)

    for split, utts in by_split.items():
        write_kaldi_dir(out / split, utts)

    summary = {
        "preset": preset,
        "seed": seed,
        "version": FORMAT_VERSION,
        "config": asdict(cfg),
        "sample_rate": SAMPLE_RATE,
        "splits": {s: _split_summary(u, failures[s]) for s, u in by_split.items()},
        "skipped_total": sum(failures[s] for s in SPLITS),
        "voices": info["voices"],
        "text_pool": info["text_pool"],
        "elapsed_s": round(time.time() - t0, 1),
        "num_workers": num_workers,
    }
    atomic_write_text(
        out / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    )
    if summary["skipped_total"]:
        logger.warning("%d utterances skipped (TTS failures)", summary["skipped_total"])
    return summary


def synthesize_slice(preset: str, split: str, n: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Render only the first `n` utterances (in plan order) of one split of a preset into a Kaldi
    dir `out_dir/<split>` — byte-identical to the same utterances of a full `synthesize` run.

    Used to re-check a bundled model's card without synthesising the whole corpus.

    Example:
        >>> synthesize_slice("paper", "test", 60, "/tmp/slice")   # -> /tmp/slice/test
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    out = Path(out_dir)
    plans, _ = plan_corpus(PRESETS[preset], out, seed)
    chosen = sorted(
        (p for p in plans if p.split == split and not p.heldout), key=lambda p: p.index
    )[:n]
    if not chosen:
        raise ValueError(f"split {split!r} of preset {preset!r} has no utterances")
    (out / "wavs" / split).mkdir(parents=True, exist_ok=True)
    done = []
    for plan in chosen:
        r = _render_job((plan, True))
        if r["ok"]:
            done.append((plan, r["dur"]))
        else:
            logger.warning("skipped %s: %s", plan.uttid, r["error"])
    write_kaldi_dir(out / split, done)
    return out / split
