"""Text sources of the synthetic corpus: real sentences read at run time from the Debian
``fortunes`` / ``fortunes-zh`` packages, cleaned into what a TTS engine can speak (``tts``) and
its normalised transcript (``text``), deduplicated, and restricted to a learnable character set.

Example:
    >>> zh, en = load_sentences()   # needs fortunes + fortunes-zh  # doctest: +SKIP
    >>> zh = restrict_zh_vocab(zh, ZH_CHAR_VOCAB)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ume.data.text import is_cjk

logger = logging.getLogger(__name__)


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


def _en_clean(sent: str, max_words: int = EN_MAX_WORDS) -> Sentence | None:
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
    if not (EN_MIN_WORDS <= len(words) <= max_words):
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
    if not (EN_MIN_WORDS <= n <= max_words) or not _EN_NORM_OK.match(text):
        return None
    return Sentence(tts=s, text=text)


def _dedup(sents: Iterable[Sentence], seen: set[str] | None = None) -> list[Sentence]:
    """`sents` without empty or repeated transcripts; `seen` (updated) holds transcripts
    already taken elsewhere, which are dropped too."""
    seen = set() if seen is None else seen
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
