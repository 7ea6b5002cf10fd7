"""The id <-> unit part that ume's two tokenizers share: an ordered unit list whose id 0 is
'<blank>'; <sos> and <eos> are the last id unless the tokenizer says otherwise (`special`).

Example:
    >>> class Units(UnitList):
    ...     def __init__(self, units): self.units = list(units)
    >>> u = Units(["<blank>", "a", "<sos/eos>"])
    >>> u.vocab_size, u.sos, u.eos, u.id2token(1)
    (3, 2, 2, 'a')
"""

from __future__ import annotations


class UnitList:
    """Mixin for a tokenizer holding `self.units` (list[str], id = position)."""

    BLANK = 0
    units: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.units)

    # {"sos": id, "eos": id} where they are not the last id (WeNet's special_tokens)
    special: dict[str, int] = {}

    @property
    def sos(self) -> int:
        """Id the attention decoder starts from."""
        return self.special.get("sos", len(self.units) - 1)

    @property
    def eos(self) -> int:
        """Id that ends a decoded sequence."""
        return self.special.get("eos", len(self.units) - 1)

    def id2token(self, i: int) -> str:
        """Unit string of id `i`."""
        if not 0 <= i < len(self.units):
            raise IndexError(f"token id {i} out of range [0, {len(self.units)})")
        return self.units[i]
