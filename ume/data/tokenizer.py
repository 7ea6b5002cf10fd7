"""One bilingual vocabulary: Mandarin characters plus an English sentencepiece BPE.

Layout of ids: ``0 '<blank>'``, ``1 '<unk>'``, then the CJK characters (sorted), then the BPE
pieces (in sentencepiece order, without its own ``<unk>``), and finally ``'<sos/eos>'``.
English pieces keep sentencepiece's word-start mark ``'▁'``, which :meth:`Tokenizer.decode`
uses to put the spaces back.

Example:
    >>> tok = Tokenizer.train(["你好WORLD", "HELLO THERE"], bpe_size=64, workdir="exp/tok")
    >>> ids = tok.encode("你好WORLD")
    >>> tok.decode(ids)
    '你好WORLD'
    >>> tok.save("exp/tok"); tok = Tokenizer.load("exp/tok")
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from ume.atomic import atomic_write_bytes, atomic_write_text
from ume.data.text import is_cjk, join_units, split_units, unit_lang
from ume.data.unit_list import UnitList
from ume.errors import UmeError

logger = logging.getLogger(__name__)

WORD_START = "\u2581"  # '▁', sentencepiece's word-boundary mark
_VERSION = 1
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _kind(jpath: Path) -> str | None:
    """The "kind" a tokenizer.json declares (None for ours, which has none, or if unreadable)."""
    try:
        obj = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return obj.get("kind") if isinstance(obj, dict) else None


class Tokenizer(UnitList):
    """Mandarin characters + English BPE pieces in one id space.

    Example:
        >>> tok = Tokenizer.load("exp/tok")
        >>> tok.decode(tok.encode("我爱PYTHON CODE"))
        '我爱PYTHON CODE'
    """

    UNK = 1

    def __init__(self, units: list[str], bpe_model: bytes) -> None:
        """Build from the full unit list (see module docstring) and a serialized BPE model."""
        if len(units) < 3 or units[0] != "<blank>" or units[1] != "<unk>":
            raise UmeError("units must start with '<blank>', '<unk>'")
        if units[-1] != "<sos/eos>":
            raise UmeError("units must end with '<sos/eos>'")
        if len(set(units)) != len(units):
            dups = sorted(u for u, c in Counter(units).items() if c > 1)
            raise UmeError(f"units contain duplicates: {dups[:10]}")
        self.units = list(units)
        self._bpe_model = bpe_model
        self._sp = spm.SentencePieceProcessor(model_proto=bpe_model)
        self._unit2id = {u: i for i, u in enumerate(self.units)}
        # sentencepiece id -> our id (its <unk> and other specials -> UNK)
        self._sp2id: list[int] = []
        for i in range(self._sp.get_piece_size()):
            piece = self._sp.id_to_piece(i)
            if self._sp.is_unknown(i) or self._sp.is_control(i):
                self._sp2id.append(self.UNK)
            elif piece in self._unit2id:
                self._sp2id.append(self._unit2id[piece])
            else:
                raise UmeError(
                    f"BPE piece {piece!r} is not in the unit list; tokenizer.json and bpe.model "
                    "do not belong together (retrain or copy both files)"
                )
        self._is_char = [len(u) == 1 and is_cjk(u) for u in self.units]

    # -- ids (vocab_size, sos, eos, id2token: UnitList) -----------------------------------------
    def token2id(self, token: str) -> int:
        """Id of unit `token`, or UNK."""
        return self._unit2id.get(token, self.UNK)

    # -- training ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: list[str],
        bpe_size: int,
        workdir: str | Path,
        min_char_count: int = 1,
    ) -> Tokenizer:
        """Build the vocabulary from normalised transcripts.

        CJK characters seen at least `min_char_count` times become char tokens; the English
        words train a deterministic sentencepiece BPE model of `bpe_size` pieces (its own
        ``<unk>`` included), reduced automatically (logged) when the English text is too small.
        Every letter A-Z (in the case used by the texts), digit and apostrophe is always covered.

        Example:
            >>> tok = Tokenizer.train(texts, bpe_size=256, workdir="exp/tok")
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        chars: Counter[str] = Counter()
        lines: list[str] = []
        for text in texts:
            words = []
            for u in split_units(text):
                if unit_lang(u) == "zh":
                    chars[u] += 1
                else:
                    words.append(u)
            if words:
                lines.append(" ".join(words))
        # coverage line(s): every single letter / digit / apostrophe is encodable
        letters = "".join(lines)
        has_lower = any(c.islower() for c in letters)
        has_upper = any(c.isupper() for c in letters) or not has_lower
        cover = string.digits + "'"
        cover += string.ascii_uppercase if has_upper else ""
        cover += string.ascii_lowercase if has_lower else ""
        lines.append(" ".join(cover))

        train_txt = workdir / "bpe_train.txt"
        train_txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prefix = workdir / "bpe"
        size = int(bpe_size)
        while True:
            try:
                spm.SentencePieceTrainer.train(
                    input=str(train_txt),
                    model_prefix=str(prefix),
                    model_type="bpe",
                    vocab_size=size,
                    character_coverage=1.0,
                    unk_id=0,
                    bos_id=-1,
                    eos_id=-1,
                    pad_id=-1,
                    normalization_rule_name="identity",
                    num_threads=1,
                    input_sentence_size=100_000_000,
                    shuffle_input_sentence=False,
                    minloglevel=2,
                )
                break
            except RuntimeError as e:
                m = _TOO_HIGH.search(str(e))
                if m and int(m.group(2)) < size:
                    logger.warning(
                        "English training text too small for bpe_size=%d; using %s instead",
                        size,
                        m.group(2),
                    )
                    size = int(m.group(2))
                    continue
                m = _TOO_SMALL.search(str(e))
                if m:
                    raise UmeError(
                        f"bpe_size={bpe_size} is smaller than the {m.group(2)} pieces needed for "
                        f"the English characters; set tokenizer.bpe_size >= {m.group(2)}"
                    ) from e
                raise
        bpe_model = (workdir / "bpe.model").read_bytes()
        sp = spm.SentencePieceProcessor(model_proto=bpe_model)
        pieces = [
            sp.id_to_piece(i)
            for i in range(sp.get_piece_size())
            if not (sp.is_unknown(i) or sp.is_control(i))
        ]
        kept = sorted(c for c, n in chars.items() if n >= min_char_count)
        dropped = len(chars) - len(kept)
        if dropped:
            logger.info(
                "tokenizer: %d CJK chars seen < %d times map to <unk>", dropped, min_char_count
            )
        units = ["<blank>", "<unk>", *kept, *pieces, "<sos/eos>"]
        logger.info(
            "tokenizer: %d CJK chars + %d BPE pieces = %d units", len(kept), len(pieces), len(units)
        )
        return cls(units, bpe_model)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, dir: str | Path) -> None:
        """Write dir/tokenizer.json (units, version) and dir/bpe.model."""
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / "bpe.model", self._bpe_model)
        obj = {"version": _VERSION, "bpe_model": "bpe.model", "units": self.units}
        atomic_write_text(d / "tokenizer.json", json.dumps(obj, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, dir: str | Path) -> Tokenizer:
        """Read a tokenizer saved with :meth:`save` (or a WeNet-style `UnitsTokenizer`, written
        by `ume import --format wenet`, when tokenizer.json says "kind": "units")."""
        d = Path(dir)
        jpath, mpath = d / "tokenizer.json", d / "bpe.model"
        if jpath.is_file() and _kind(jpath) == "units":
            from ume.data.units_tokenizer import UnitsTokenizer

            return UnitsTokenizer.load(d)  # type: ignore[return-value]
        for p in (jpath, mpath):
            if not p.is_file():
                raise FileNotFoundError(
                    f"tokenizer file {p} is missing; a tokenizer dir needs tokenizer.json and "
                    "bpe.model (create them with Tokenizer.train(...).save(dir))"
                )
        try:
            obj = json.loads(jpath.read_text(encoding="utf-8"))
            version, units = obj["version"], obj["units"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UmeError(f"{jpath} is malformed ({e}); re-save the tokenizer") from e
        if version != _VERSION:
            raise UmeError(f"{jpath}: unsupported tokenizer version {version} (want {_VERSION})")
        try:
            return cls(units, mpath.read_bytes())
        except ValueError as e:
            raise UmeError(f"{d}: {e}") from e

    # -- encode / decode -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Normalised text -> ids. Unknown CJK characters (and unencodable chars) -> UNK.

        Example:
            >>> tok.encode("你好WORLD")   # [id('你'), id('好'), id('▁WOR'), id('LD')]
        """
        ids: list[int] = []
        words: list[str] = []

        def flush() -> None:
            if words:
                for pieces in self._sp.encode(words, out_type=int):
                    ids.extend(self._sp2id[p] for p in pieces)
                words.clear()

        for u in split_units(text):
            if len(u) == 1 and is_cjk(u):
                flush()
                ids.append(self._unit2id.get(u, self.UNK))
            else:
                words.append(u)
        flush()
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> normalised text (join_units spacing). <blank>, <unk> and <sos/eos> are dropped.

        Example:
            >>> tok.decode(tok.encode("我爱PYTHON CODE"))
            '我爱PYTHON CODE'
        """
        units: list[str] = []
        in_word = False  # the last unit is an English word that may be continued
        n = len(self.units)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise IndexError(f"token id {i} out of range [0, {n})")
            if i in (self.BLANK, self.UNK) or i == n - 1:
                continue
            tok = self.units[i]
            if self._is_char[i]:
                units.append(tok)
                in_word = False
            elif tok.startswith(WORD_START) or not in_word:
                units.append(tok.lstrip(WORD_START))
                in_word = True
            else:
                units[-1] += tok
        return join_units([u for u in units if u])

    def __repr__(self) -> str:
        n_chars = sum(self._is_char)
        return f"Tokenizer(vocab_size={self.vocab_size}, cjk_chars={n_chars})"
