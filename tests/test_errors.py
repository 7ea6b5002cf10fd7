"""ume.errors: user-facing errors are UmeError (a ValueError), and lists of names in a message
are cut to a readable length."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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


def _bad_inputs(tmp_path: Path) -> list[tuple[str, Callable[[], object]]]:
    """(what, call) pairs: each call gets a user input or option wrong."""
    import torch
    from torch import nn

    import ume.api
    from ume.config import MoEConfig
    from ume.data.units_tokenizer import UnitsTokenizer, read_units
    from ume.experiment.bundle import bundle
    from ume.model.moe import expert_tensors_from_dense
    from ume.model.moe_dispatch import DispatchOptions
    from ume.model.moe_split import MoERouter, split_moe
    from ume.model.router import check_moe_config

    units = tmp_path / "units.txt"
    units.write_text("<blank> 0\n<unk> x\n", encoding="utf-8")
    w = torch.zeros(6, 4)
    return [
        ("freeze trainable", lambda: ume.api.freeze(nn.Linear(2, 2), trainable="bogus")),
        ("freeze selects nothing", lambda: ume.api.freeze(nn.Linear(2, 2), trainable="moe")),
        ("moe config", lambda: check_moe_config(MoEConfig(num_experts=4, top_k=3, groups=2), 8)),
        ("dispatch path", lambda: DispatchOptions(path="warp")),
        ("groups", lambda: expert_tensors_from_dense(w, w[:, 0], w.t(), w[0], 4, groups=3)),
        ("kmeans split", lambda: MoERouter(4, MoEConfig(num_experts=2, router_init="kmeans"), 8)),
        ("split cfg", lambda: split_moe(nn.Linear(4, 8), nn.Linear(8, 4), 2, 1, None, MoEConfig())),
        ("units kind", lambda: UnitsTokenizer(["<blank>", "a"], kind="word")),
        ("units file", lambda: read_units(units)),
        ("bundle dtype", lambda: bundle(tmp_path, tmp_path, tmp_path, "cmd", dtype="int8")),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_user_inputs_raise_ume_errors(tmp_path: Path, case: int) -> None:
    """Told as one line by the command line, still caught by `except ValueError`."""
    cases = _bad_inputs(tmp_path)
    assert len(cases) == 10
    what, call = cases[case]
    with pytest.raises(UmeError):
        call()
