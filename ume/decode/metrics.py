"""Edit-distance counting, the leaf that scoring and significance testing share.

`ErrorCounts` sums substitutions, deletions and insertions over unit sequences (one unit per
CJK character, one per English word, see `ume.data.text.split_units`); `utterance_errors` gives
the per-utterance MER counts a paired bootstrap resamples.

Example:
    >>> c = ErrorCounts()
    >>> c.add(["你", "好"], ["你"])
    >>> c.errors, c.rate
    (1, 50.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kaldialign
import numpy as np

from ume.data.text import normalize_text, split_units


@dataclass
class ErrorCounts:
    """Summed edit-distance counts; ``dele`` is the deletion count (``del`` in dict output)."""

    ref: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Errors / reference units in percent; 0.0 if both are 0, inf if only ref is 0."""
        if self.ref == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.ref

    def add(self, ref: list[str], hyp: list[str]) -> None:
        """Accumulate the edit distance between unit lists `ref` and `hyp`."""
        d = kaldialign.edit_distance(ref, hyp)
        self.ref += len(ref)
        self.sub += int(d["sub"])
        self.dele += int(d["del"])
        self.ins += int(d["ins"])

    def to_dict(self) -> dict:
        return {
            "ref": self.ref,
            "sub": self.sub,
            "del": self.dele,
            "ins": self.ins,
            "errors": self.errors,
        }


def utterance_errors(refs: dict[str, str], hyps: dict[str, str], keys: list[str]) -> np.ndarray:
    """(N, 2) int array: MER edit errors and reference units per utterance of `keys`
    (a missing hypothesis counts as empty, as in `score`)."""
    out = np.zeros((len(keys), 2), dtype=np.int64)
    for i, key in enumerate(keys):
        c = ErrorCounts()
        c.add(
            split_units(normalize_text(refs[key])), split_units(normalize_text(hyps.get(key, "")))
        )
        out[i] = (c.errors, c.ref)
    return out
