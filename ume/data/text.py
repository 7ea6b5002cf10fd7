"""Text normalisation for bilingual (Mandarin + English) transcripts.

Rules: NFKC (full-width -> half-width), punctuation and symbols removed, English case folded to
upper case, Chinese characters written without spaces, English words separated by one space,
and one space between an English word and an adjacent Chinese character is removed.

Example:
    >>> normalize_text("你好，World！ It’s  ＯＫ。")
    "你好WORLD IT'S OK"
    >>> split_units("你好WORLD IT'S OK")
    ['你', '好', 'WORLD', "IT'S", 'OK']
"""

from __future__ import annotations

import re
import unicodedata

# CJK Unified Ideographs (+ extension A and compatibility ideographs)
_CJK_RANGES = (
    (0x3007, 0x3007),  # 〇 (ideographic zero)
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2FA1F),  # extensions B-F and compatibility supplement
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def is_cjk(ch: str) -> bool:
    """True if `ch` is a single CJK ideograph (a Mandarin 'character' token)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def normalize_text(text: str, case: str = "upper") -> str:
    """Normalise a transcript: see module docstring. Returns '' if nothing speakable remains."""
    text = _ANSI.sub("", text)
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    out = []
    for ch in text:
        if is_cjk(ch):
            out.append(f" {ch} ")
        elif ch.isascii() and (ch.isalnum() or ch == "'"):
            out.append(ch)
        elif ch.isspace() or unicodedata.category(ch)[0] in "PSZC":
            out.append(" ")  # punctuation, symbols, separators, control -> word break
        elif ch.isalpha():
            # non-ASCII letters (accents etc.): strip diacritics when possible
            base = unicodedata.normalize("NFKD", ch)[0]
            out.append(base if base.isascii() else {"ß": "ss"}.get(ch, " "))
        else:
            out.append(" ")
    words = "".join(out).split()
    words = [w.strip("'") for w in words]
    words = [w for w in words if w]
    if case == "upper":
        words = [w.upper() for w in words]
    elif case == "lower":
        words = [w.lower() for w in words]
    return join_units(words)


def join_units(units: list[str]) -> str:
    """Join CJK characters without spaces and English words with single spaces."""
    s = []
    prev_cjk = True
    for i, u in enumerate(units):
        cur_cjk = len(u) == 1 and is_cjk(u)
        if i > 0 and not (cur_cjk or prev_cjk):
            s.append(" ")
        s.append(u)
        prev_cjk = cur_cjk
    return "".join(s)


def split_units(text: str) -> list[str]:
    """Split normalised text into scoring units: each CJK character, each English word."""
    units: list[str] = []
    for word in text.split():
        buf = ""
        for ch in word:
            if is_cjk(ch):
                if buf:
                    units.append(buf)
                    buf = ""
                units.append(ch)
            else:
                buf += ch
        if buf:
            units.append(buf)
    return units


def unit_lang(unit: str) -> str:
    """'zh' for a CJK character unit, 'en' otherwise."""
    return "zh" if len(unit) == 1 and is_cjk(unit) else "en"


def text_lang(text: str) -> str:
    """'zh', 'en' or 'mix' for a normalised transcript."""
    langs = {unit_lang(u) for u in split_units(text)}
    if langs == {"zh"}:
        return "zh"
    if langs == {"en"}:
        return "en"
    return "mix"
