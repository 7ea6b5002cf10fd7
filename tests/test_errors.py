"""ume.errors: user-facing errors are UmeError (a ValueError), and lists of names in a message
are cut to a readable length."""

from __future__ import annotations

import pytest

from ume.errors import UmeError, name_list


def test_name_list_sorts_and_cuts_long_lists() -> None:
    assert name_list(["b", "a"]) == "a, b"
    assert name_list([]) == ""
    keys = [f"k{i:02d}" for i in range(15)]
    assert name_list(reversed(keys), limit=3) == "k00, k01, k02 ... (+12 more)"
    assert name_list(keys[:12]) == ", ".join(keys[:12])  # exactly the limit: nothing cut


def test_upcycle_and_wenet_messages_share_one_formatter() -> None:
    import ume.interop.wenet as wenet
    import ume.upcycle.convert as convert

    assert convert.name_list is wenet.name_list is name_list
    assert not hasattr(convert, "_names") and not hasattr(wenet, "_names")


def test_ume_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        raise UmeError("x")
