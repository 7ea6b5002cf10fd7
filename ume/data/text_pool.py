"""The large text pool: modern written Mandarin and English from offline Debian documentation,
beside the fortune texts of :mod:`ume.data.text_sources`, cut into sentences a TTS engine can
speak and whose transcripts equal what it says.

Domains (each sentence carries the domain it came from):

* ``fortunes``  — Debian ``fortunes`` / ``fortunes-zh`` (quotes, classical poetry);
* ``manpages``  — manual pages of ``manpages-zh`` (zh_CN) and ``manpages``/``manpages-dev``
  (English), read from dpkg's file lists so that other installed tools do not change the pool;
* ``handbook``  — *The Debian Administrator's Handbook* (``debian-handbook``, en-US and zh-CN);
* ``edu``       — the Debian Edu manuals (``debian-edu-doc-en``/``-zh-cn``);
* ``gimp``, ``kicad`` — the GIMP and KiCad user manuals (``gimp-help-en``/``-zh-cn``,
  ``kicad-doc-en``/``-zh``);
* ``pydoc``, ``pgdoc``, ``gitdoc`` — the Python 3.11, PostgreSQL 15 and Git documentation
  (``python3.11-doc``, ``postgresql-doc-15``, ``git-doc``; English only);
* ``reference`` — the *Debian Reference* (``debian-reference-en`` / ``-zh-cn``): never trained
  on, it is the held-out text domain of the ``xl`` corpus.

Translation catalogues (``*.po``/``*.mo``) and licence texts (``/usr/share/common-licenses``,
``copyright`` files, roff comments that carry the man pages' licence headers) are never read:
they are reserved for an evaluation nobody tunes on.

Normalisation: NFKC; Arabic numerals become words (``cn2an`` in Mandarin, ``num2words`` in
English) in both the TTS text and the transcript; a Mandarin sentence may keep up to three
lower- or title-case English words (real code-switching, e.g. ``用grep命令搜索``), which
:func:`tts_segments` hands to an English voice.

Example:
    >>> pool = load_text_pool()  # doctest: +SKIP
    >>> len(pool.sentences("zh", "manpages")) > 10_000  # doctest: +SKIP
    True
"""

from __future__ import annotations

import gzip
import html.parser
import logging
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ume.data.text import is_cjk, normalize_text, split_units
from ume.data.text_sources import Sentence, _dedup, _en_clean, load_sentences

logger = logging.getLogger(__name__)

MAN_ROOT = Path("/usr/share/man")
HANDBOOK_ROOT = Path("/usr/share/doc/debian-handbook/html")
REFERENCE_ROOT = Path("/usr/share/debian-reference")
# HTML manuals: domain -> (zh dir, en dir); None: the domain has no text in that language
HTML_MANUALS: dict[str, tuple[Path | None, Path | None]] = {
    "handbook": (HANDBOOK_ROOT / "zh-CN", HANDBOOK_ROOT / "en-US"),
    "edu": (Path("/usr/share/doc/debian-edu-doc-zh-cn"), Path("/usr/share/doc/debian-edu-doc-en")),
    "gimp": (Path("/usr/share/gimp/2.0/help/zh_CN"), Path("/usr/share/gimp/2.0/help/en")),
    "kicad": (Path("/usr/share/doc/kicad/help/zh"), Path("/usr/share/doc/kicad/help/en")),
    "pydoc": (None, Path("/usr/share/doc/python3.11/html")),
    "pgdoc": (None, Path("/usr/share/doc/postgresql-doc-15/html")),
    "gitdoc": (None, Path("/usr/share/doc/git-doc")),
}
# Man pages are read from these packages' file lists only, so that the pool does not depend
# on which other tools a machine happens to have installed.
MAN_PACKAGES = {"zh": ("manpages-zh",), "en": ("manpages", "manpages-dev")}
DPKG_INFO = Path("/var/lib/dpkg/info")


def domain_langs(domain: str) -> tuple[str, ...]:
    """The languages a domain has text in."""
    if domain in HTML_MANUALS:
        return tuple(lang for lang, d in zip(("zh", "en"), HTML_MANUALS[domain]) if d)
    return ("zh", "en")


DOMAINS = (
    "fortunes",
    "manpages",
    "handbook",
    "edu",
    "gimp",
    "kicad",
    "pydoc",
    "pgdoc",
    "gitdoc",
    "reference",
)
HELDOUT_DOMAIN = "reference"
# Debian packages each domain needs (scripts/setup.sh installs them).
DOMAIN_PACKAGES = {
    "fortunes": "fortunes fortunes-zh",
    "manpages": "manpages manpages-dev manpages-zh",
    "handbook": "debian-handbook",
    "edu": "debian-edu-doc-en debian-edu-doc-zh-cn",
    "gimp": "gimp-help-en gimp-help-zh-cn",
    "kicad": "kicad-doc-en kicad-doc-zh",
    "pydoc": "python3.11-doc",
    "pgdoc": "postgresql-doc-15",
    "gitdoc": "git-doc",
    "reference": "debian-reference-en debian-reference-zh-cn",
}

ZH_MIN_UNITS, ZH_TARGET_UNITS, ZH_MAX_UNITS = 6, 14, 26
EN_MAX_WORDS = 20
ZH_MAX_EN_WORDS = 3
_ZH_CLAUSE_END = "。！？；!?;\n"
_ZH_CLAUSE_SOFT = "，、：,:"
_ZH_SPLIT = re.compile(f"([{re.escape(_ZH_CLAUSE_END + _ZH_CLAUSE_SOFT)}])")
_EN_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*\d)")
_ESPEAK_UNKNOWN_HANZI = frozenset("塰忄衤")


# --------------------------------------------------------------------------- readers


_ROFF_INLINE = frozenset("B I BR IR RB BI IB SM SB".split())  # font macros: their text is prose
# Licence texts are reserved for evaluation: pages that are one (by file name), man-page
# sections that hold one (by title), and any paragraph written in a licence's words.
_LICENCE_PAGE = re.compile(r"licen[cs]e|copying|copyright|gfdl|gpl|legal", re.I)
_LICENCE_SECTION = re.compile(r"copyright|licen[cs]e|copying|版权|许可|授权", re.I)
_LICENCE_WORDS = re.compile(
    r"copyright|permission is granted|free software foundation|general public licen[cs]e|"
    r"without (any )?warranty|all rights reserved|版权|自由软件基金会|通用公共许可|担保",
    re.I,
)
_ROFF_ESCAPE = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\s[+-]?\d|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^%:]")


def _roff_text(src: str) -> list[str]:
    """Paragraphs of running text of a roff (man) page: comments (licence headers), licence
    sections, requests and tables dropped, font escapes removed; a paragraph ends at a blank
    line or a paragraph macro."""
    paras: list[str] = []
    cur: list[str] = []
    in_table = in_licence = False

    def flush() -> None:
        if cur:
            paras.append(" ".join(cur))
            cur.clear()

    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\"', '\\"')):
            continue
        if line.startswith(".TS"):
            in_table = True
        if in_table:
            in_table = not line.startswith(".TE")
            continue
        if line.startswith((".", "'")):
            macro, _, args = line[1:].strip().partition(" ")
            if macro in ("SH", "SS"):
                flush()
                in_licence = _LICENCE_SECTION.search(args) is not None
            elif macro in _ROFF_INLINE and args and not in_licence:
                cur.append(args.replace('"', ""))
            else:
                flush()
            continue
        if in_licence:
            continue
        if not line.strip():
            flush()
            continue
        cur.append(line)
    flush()
    out = []
    for p in paras:
        p = _ROFF_ESCAPE.sub("", p).replace("\\-", "-").replace("\\(em", "—")
        p = p.replace("\\e", "\\").replace("\\ ", " ")
        if "\\" in p:
            p = re.sub(r"\\\S*", " ", p)
        out.append(p)
    return out


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _man_files(lang: str) -> list[Path]:
    """The man pages of :data:`MAN_PACKAGES` (dpkg's file lists), real files only."""
    files: set[Path] = set()
    prefix = str(MAN_ROOT / "zh_CN" / "man") if lang == "zh" else str(MAN_ROOT / "man")
    for pkg in MAN_PACKAGES[lang]:
        lst = DPKG_INFO / f"{pkg}.list"
        if not lst.is_file():
            continue
        for line in lst.read_text(encoding="utf-8", errors="replace").splitlines():
            p = Path(line)
            if line.startswith(prefix) and p.is_file() and not p.is_symlink():
                files.add(p)
    return sorted(files)


class _ParagraphHTML(html.parser.HTMLParser):
    """Text of <p>/<li>/<dd>/<td>/<div class="para"> elements of an HTML page (no code, no pre)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self._buf: list[str] = []
        self._depth = 0
        self._skip = 0
        self._tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("pre", "code", "script", "style", "kbd", "tt", "samp"):
            self._skip += 1
        elif tag in ("p", "li", "dd", "td") or (tag == "div" and ("class", "para") in attrs):
            self._depth += 1
            self._tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("pre", "code", "script", "style", "kbd", "tt", "samp"):
            self._skip = max(0, self._skip - 1)
            if self._depth:
                self._buf.append(" \x00 ")  # an elided code span breaks the sentence
        elif self._tags and tag == self._tags[-1]:
            self._tags.pop()
            self._depth -= 1
            if not self._depth:
                self.paras.append("".join(self._buf))
                self._buf = []

    def handle_data(self, data: str) -> None:
        if self._depth and not self._skip:
            self._buf.append(data)


def _html_paragraphs(path: Path) -> list[str]:
    parser = _ParagraphHTML()
    parser.feed(_read_text(path))
    return parser.paras


def domain_paragraphs(domain: str, lang: str) -> Iterator[str]:
    """Raw paragraphs of one (domain, language) source, in a fixed file order; licence pages
    and paragraphs in a licence's words are left out."""
    return (p for p in _source_paragraphs(domain, lang) if not _LICENCE_WORDS.search(p))


def _html_files(d: Path | None, pattern: str) -> list[Path]:
    if d is None or not d.is_dir():
        return []
    return sorted(p for p in d.rglob(pattern) if not _LICENCE_PAGE.search(p.name))


def _source_paragraphs(domain: str, lang: str) -> Iterator[str]:
    if domain == "manpages":
        for p in _man_files(lang):
            try:
                yield from _roff_text(_read_text(p))
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                logger.warning("skipping unreadable man page %s: %s", p, e)
        return
    if domain in HTML_MANUALS:
        files = _html_files(HTML_MANUALS[domain][0 if lang == "zh" else 1], "*.html")
    elif domain == "reference":
        files = _html_files(REFERENCE_ROOT, f"*.{'zh-cn' if lang == 'zh' else 'en'}.html")
    else:
        raise ValueError(f"unknown text domain {domain!r}; choose from {DOMAINS}")
    for p in files:
        yield from _html_paragraphs(p)


# --------------------------------------------------------------------------- sentences


def _zh_numbers(s: str) -> str:
    import cn2an  # a light pure-Python dependency, imported on use

    def repl(m: re.Match) -> str:
        try:
            with warnings.catch_warnings():  # its notice that it keeps 16 decimals, in Chinese
                warnings.simplefilter("ignore", UserWarning)
                return cn2an.an2cn(m.group(0), "low")
        except (ValueError, KeyError):
            return m.group(0)

    return _NUMBER.sub(repl, s)


def _en_numbers(s: str) -> str:
    from num2words import num2words

    def repl(m: re.Match) -> str:
        t = m.group(0)
        if "." in t or len(t) > 6:
            return t  # versions, addresses: left in, so the sentence is rejected
        return num2words(int(t)).replace("-", " ").replace(",", "")

    return _NUMBER.sub(repl, s)


def _zh_clause_units(piece: str) -> list[str] | None:
    """The speakable units of a Mandarin clause (ideographs and English words), or None if the
    clause holds anything a TTS engine would read differently from its transcript."""
    units: list[str] = []
    n_en = 0
    for tok in re.findall(r"[A-Za-z]+|\S", piece):
        if tok.isascii() and tok.isalpha():
            if len(tok) < 2 or (tok.isupper() and len(tok) > 1) or not tok[1:].islower():
                return None  # acronyms and camel case are spelt or misread
            n_en += 1
            units.append(tok)
        elif len(tok) == 1 and is_cjk(tok) and 0x4E00 <= ord(tok) <= 0x9FFF:
            if tok in _ESPEAK_UNKNOWN_HANZI:
                return None
            units.append(tok)
        elif unicodedata.category(tok)[0] in "PZ" and tok not in "/\\_-.@#$%&*=+<>|~^`[]{}()":
            continue  # quotes and brackets around a term
        else:
            return None
    return units if units and n_en <= ZH_MAX_EN_WORDS else None


def _zh_sentence(clauses: list[list[str]]) -> Sentence:
    tts_parts = []
    for units in clauses:
        part = ""
        for i, u in enumerate(units):
            if u.isascii():
                part += (" " if i else "") + u + " "
            else:
                part += u
        tts_parts.append(part.strip())
    tts = "，".join(tts_parts) + "。"
    return Sentence(tts=tts, text=normalize_text(tts))


def zh_sentences_from_paragraph(para: str) -> list[Sentence]:
    """Mandarin sentences of a paragraph of modern written text: numbers read out, clauses that
    hold symbols/digits/acronyms dropped (they break the sentence), adjacent clauses merged into
    6-26 units, at most three English words each."""
    para = _zh_numbers(unicodedata.normalize("NFKC", para))
    if not any(is_cjk(c) for c in para):
        return []
    out: list[Sentence] = []
    buf: list[list[str]] = []

    def flush() -> None:
        if buf:
            n = sum(len(c) for c in buf)
            if ZH_MIN_UNITS <= n <= ZH_MAX_UNITS:
                s = _zh_sentence(buf)
                n_en = sum(u.isascii() for c in buf for u in c)
                if s.text and n_en <= ZH_MAX_EN_WORDS and any(is_cjk(ch) for ch in s.text):
                    out.append(s)
            buf.clear()

    pieces = _ZH_SPLIT.split(para)
    for i in range(0, len(pieces), 2):
        piece = pieces[i].strip()
        delim = pieces[i + 1] if i + 1 < len(pieces) else "。"
        units = _zh_clause_units(piece) if piece else None
        if units is None:
            flush()
            continue
        cur = sum(len(c) for c in buf)
        if buf and not (
            (cur < ZH_MIN_UNITS or cur + len(units) <= ZH_TARGET_UNITS)
            and cur + len(units) <= ZH_MAX_UNITS
        ):
            flush()
        buf.append(units)
        if delim in _ZH_CLAUSE_END:
            flush()
    flush()
    return out


_EN_SENT_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+(?=[A-Z\"'(])")


def en_sentences_from_paragraph(para: str) -> list[Sentence]:
    """English sentences of a paragraph of modern written text (3-20 words; numbers up to six
    digits read out; anything with symbols, acronyms or code dropped)."""
    para = unicodedata.normalize("NFKC", para).replace("\u2019", "'").replace("\u2018", "'")
    para = re.sub(r"[\u201c\u201d]", '"', para)
    para = re.sub(r"\s+", " ", para).strip()
    if not para or any(is_cjk(c) for c in para):
        return []
    out = []
    for sent in _EN_SENT_END.split(para):
        if "\x00" in sent or len(_EN_WORD.findall(sent)) < 2 or re.search(r"(^|\s)-", sent):
            continue  # an elided code span, a bare number, a command-line option
        s = _en_clean(_en_numbers(sent), max_words=EN_MAX_WORDS)
        if s is not None:
            out.append(s)
    return out


# --------------------------------------------------------------------------- the pool


@dataclass
class TextPool:
    """Deduplicated sentences by (language, domain). A transcript occurs in one domain only:
    the held-out domain wins, so no held-out sentence is ever trained on."""

    by_key: dict[tuple[str, str], list[Sentence]] = field(default_factory=dict)

    def sentences(self, lang: str, domain: str) -> list[Sentence]:
        return self.by_key.get((lang, domain), [])

    def train_domains(self) -> tuple[str, ...]:
        return tuple(d for d in DOMAINS if d != HELDOUT_DOMAIN)

    def stats(self) -> dict:
        """Sentence and vocabulary counts per (language, domain) and in all train domains."""
        out: dict = {}
        for (lang, dom), sents in sorted(self.by_key.items()):
            units = Counter(u for s in sents for u in split_units(s.text))
            out[f"{lang}/{dom}"] = {"sentences": len(sents), "distinct_units": len(units)}
        return out


@cache
def load_text_pool(domains: tuple[str, ...] = DOMAINS) -> TextPool:
    """Read every domain's sentences (deterministic order), deduplicated within a language with
    the held-out domain read first, so none of its transcripts reach a training domain.

    Raises:
        RuntimeError: a domain yields no sentence in a language (its Debian package is missing:
            ``bash scripts/setup.sh`` installs them).
    """
    pool = TextPool()
    order = sorted(domains, key=lambda d: d != HELDOUT_DOMAIN)
    for lang in ("zh", "en"):
        seen: set[str] = set()
        for dom in order:
            if lang not in domain_langs(dom):
                continue
            if dom == "fortunes":
                zh, en = load_sentences()
                sents = zh if lang == "zh" else en
            else:
                fn = zh_sentences_from_paragraph if lang == "zh" else en_sentences_from_paragraph
                sents = [s for para in domain_paragraphs(dom, lang) for s in fn(para)]
            kept = _dedup(sents, seen)
            if not kept:
                raise RuntimeError(
                    f"text domain {dom!r} gave no {lang} sentence: install the Debian packages "
                    f"{DOMAIN_PACKAGES[dom]} (bash scripts/setup.sh does)"
                )
            pool.by_key[(lang, dom)] = kept
    return pool
