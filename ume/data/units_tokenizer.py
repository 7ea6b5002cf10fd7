"""A tokenizer defined by a WeNet-style unit list (`units.txt`: one "token id" per line).

Two kinds, as WeNet's own tokenizers split text:
  * "char": every character is a unit (a space becomes '▁'; with split_with_space, spaces only
    separate units); decode joins the units as they are;
  * "bpe": CJK characters are units, the other stretches are upper-cased and cut into pieces by
    a sentencepiece model; decode joins the pieces and turns '▁' back into spaces.
Non-linguistic symbols ({NOISE}, <spk>, [laugh]) listed in `non_lang_syms` stay single units.
Ids follow units.txt: 0 is '<blank>'; <sos> and <eos> are the last id (older WeNet recipes,
aishell) unless `special` names them ({"sos": 2, "eos": 2} for '<sos/eos> 2', as WeNet's
BPE recipes write it and train.yaml's tokenizer_conf.special_tokens says).

It has the interface ume's decoders and trainer use (`encode`, `decode`, `vocab_size`,
`sos`, `eos`, `save`, `load`); `Tokenizer.load` returns one when the tokenizer dir holds
`tokenizer.json` with "kind": "units".

Example:
    >>> tok = UnitsTokenizer.from_units_file("wenet_exp/units.txt")          # char units
    >>> tok.decode(tok.encode("你好"))
    '你好'
    >>> tok.save("exp/tokenizer"); tok = UnitsTokenizer.load("exp/tokenizer")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ume.atomic import atomic_write_bytes, atomic_write_text
from ume.data.unit_list import UnitList
from ume.errors import UmeError

WORD_START = "\u2581"  # '▁'
KIND = "units"
_VERSION = 1
_CJK = re.compile(r"([\u4e00-\u9fff])")
_NON_LANG = re.compile(r"(\[[^\[\]]+\]|<[^<>]+>|{[^{}]+})")


def read_units(path: str | os.PathLike) -> list[str]:
    """units.txt ("token id" per line, ids 0..N-1 in any order) -> tokens indexed by id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unit list {path} does not exist")
    by_id: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UmeError(f"{path}:{n}: expected 'token id', got {line!r}")
        tid = int(parts[1])
        if tid in by_id:
            raise UmeError(f"{path}:{n}: id {tid} used twice ({by_id[tid]!r}, {parts[0]!r})")
        by_id[tid] = parts[0]
    if not by_id:
        raise UmeError(f"{path} holds no units")
    n_units = len(by_id)
    missing = sorted(set(range(n_units)) - set(by_id))
    if missing:
        raise UmeError(f"{path}: ids must be 0..{n_units - 1} without gaps; missing {missing[:10]}")
    return [by_id[i] for i in range(n_units)]


class UnitsTokenizer(UnitList):
    """Units from a WeNet unit list; see the module docstring.

    Example:
        >>> tok = UnitsTokenizer(["<blank>", "<unk>", "你", "好", "<sos/eos>"])
        >>> tok.encode("你好"), tok.decode([2, 3])
        ([2, 3], '你好')
    """

    def __init__(
        self,
        units: list[str],
        kind: str = "char",
        bpe_model: bytes | None = None,
        non_lang_syms: list[str] | None = None,
        split_with_space: bool = False,
        special: dict[str, int] | None = None,
    ) -> None:
        if kind not in ("char", "bpe"):
            raise UmeError(f"units tokenizer kind {kind!r}: use 'char' or 'bpe'")
        if kind == "bpe" and bpe_model is None:
            raise UmeError("a 'bpe' units tokenizer needs its sentencepiece model")
        if len(units) < 2 or len(set(units)) != len(units):
            raise UmeError("units must be at least 2 distinct tokens ('<blank>' ... '<sos/eos>')")
        self.units = list(units)
        self.special = dict(special or {})
        for name, i in self.special.items():
            if name not in ("sos", "eos") or not isinstance(i, int) or not 0 <= i < len(units):
                raise UmeError(
                    f"special token {name}={i!r}: expected sos/eos ids in 0..{len(units) - 1}"
                )
        self.kind = kind
        self.split_with_space = split_with_space
        self.non_lang_syms = list(non_lang_syms or [])
        self._bpe_model = bpe_model
        self._sp = None
        if bpe_model is not None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=bpe_model)
        self._unit2id = {u: i for i, u in enumerate(self.units)}
        self.unk = self._unit2id.get("<unk>")

    # -- ids (vocab_size, sos, eos, id2token: UnitList) -----------------------------------------
    def token2id(self, token: str) -> int:
        """Id of `token`; <unk> (or blank when the list has none) for unknown tokens."""
        return self._unit2id.get(token, self.unk if self.unk is not None else self.BLANK)

    # -- encode / decode -----------------------------------------------------------------------
    def _tokens(self, text: str) -> list[str]:
        text = text.strip()
        parts = [text]
        if self.non_lang_syms:
            parts = [p for p in _NON_LANG.split(text.upper()) if p.strip()]
        tokens: list[str] = []
        for part in parts:
            if part in self.non_lang_syms:
                tokens.append(part)
            elif self.kind == "bpe":
                for seg in _CJK.split(part.upper()):
                    if not seg.strip():
                        continue
                    if _CJK.fullmatch(seg):
                        tokens.append(seg)
                    else:
                        tokens.extend(self._sp.encode_as_pieces(seg))  # type: ignore[union-attr]
            else:
                chars = part.split(" ") if self.split_with_space else part
                tokens.extend(WORD_START if c == " " else c for c in chars)
        return tokens

    def encode(self, text: str) -> list[int]:
        """Text -> ids; tokens not in the unit list become <unk> (dropped if there is none)."""
        ids = []
        for t in self._tokens(text):
            if t in self._unit2id:
                ids.append(self._unit2id[t])
            elif self.unk is not None:
                ids.append(self.unk)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text as WeNet writes it; <blank>, <sos> and <eos> are dropped."""
        n = len(self.units)
        drop = (self.BLANK, self.sos, self.eos)
        toks = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise IndexError(f"token id {i} out of range [0, {n})")
            if i not in drop:
                toks.append(self.units[i])
        text = "".join(toks)
        if self.kind == "bpe":
            text = text.replace(WORD_START, " ").strip()
        return text

    # -- persistence ---------------------------------------------------------------------------
    @classmethod
    def from_units_file(
        cls,
        units_path: str | os.PathLike,
        bpe_model_path: str | os.PathLike | None = None,
        non_lang_syms_path: str | os.PathLike | None = None,
        split_with_space: bool = False,
        special: dict[str, int] | None = None,
    ) -> UnitsTokenizer:
        """Read units.txt (+ the sentencepiece model for 'bpe', + non-linguistic symbols);
        `special`: {"sos": id, "eos": id} where they are not the last id."""
        units = read_units(units_path)
        bpe = None
        if bpe_model_path is not None:
            p = Path(bpe_model_path)
            if not p.is_file():
                raise FileNotFoundError(f"BPE model {p} does not exist")
            bpe = p.read_bytes()
        syms = []
        if non_lang_syms_path is not None:
            p = Path(non_lang_syms_path)
            if not p.is_file():
                raise FileNotFoundError(f"non-linguistic symbol list {p} does not exist")
            syms = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        kind = "bpe" if bpe is not None else "char"
        return cls(units, kind, bpe, syms, split_with_space, special)

    def write_units(self, path: str | os.PathLike) -> None:
        """Write units.txt ("token id" per line)."""
        lines = "".join(f"{u} {i}\n" for i, u in enumerate(self.units))
        Path(path).write_text(lines, encoding="utf-8")

    def save(self, dir: str | os.PathLike) -> None:
        """Write dir/tokenizer.json (kind "units", the unit list, options) [+ dir/bpe.model]."""
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        obj = {
            "version": _VERSION,
            "kind": KIND,
            "units_kind": self.kind,
            "bpe_model": "bpe.model" if self._bpe_model is not None else None,
            "non_lang_syms": self.non_lang_syms,
            "split_with_space": self.split_with_space,
            "special": self.special,
            "units": self.units,
        }
        if self._bpe_model is not None:
            atomic_write_bytes(d / "bpe.model", self._bpe_model)
        atomic_write_text(d / "tokenizer.json", json.dumps(obj, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, dir: str | os.PathLike) -> UnitsTokenizer:
        """Read a tokenizer dir written by :meth:`save`."""
        d = Path(dir)
        jpath = d / "tokenizer.json"
        try:
            obj = json.loads(jpath.read_text(encoding="utf-8"))
            if obj.get("kind") != KIND or obj["version"] != _VERSION:
                raise UmeError(f"kind {obj.get('kind')!r}, version {obj.get('version')}")
            bpe = None
            if obj["bpe_model"]:
                bpe = (d / obj["bpe_model"]).read_bytes()
            return cls(
                obj["units"],
                obj["units_kind"],
                bpe,
                obj["non_lang_syms"],
                obj["split_with_space"],
                obj.get("special", {}),  # absent in files written before it existed: last id
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UmeError(f"{jpath} is not a units tokenizer ({e}); re-import the model") from e

    @property
    def bpe_model_bytes(self) -> bytes | None:
        return self._bpe_model

    def __repr__(self) -> str:
        return f"UnitsTokenizer(kind={self.kind}, vocab_size={self.vocab_size})"
