"""Weight decay by role: an upcycled model decays exactly what its dense model decayed (expert
weights as the dense FFN weights, stacked expert biases as the dense biases: not at all), and
the routers, which the dense model did not have, are not decayed."""

from __future__ import annotations

import re

import torch
from test_moe import VOCAB, tiny_model_cfg
from torch import nn

import ume
from ume.config import MoEConfig
from ume.model.asr import ASRModel
from ume.model.moe_split import MoEEntry
from ume.model.weight_decay import decay_rule
from ume.train.schedule import param_groups


def _decayed(groups: list[dict], model: nn.Module) -> dict[str, bool]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["weight_decay"] > 0 for g in groups for p in g["params"]}


def _dense_name(moe_name: str) -> str | None:
    """The dense parameter a stacked expert tensor was copied from (None for a router)."""
    if ".router." in moe_name:
        return None
    m = re.fullmatch(r"(.*)\.experts\.([wb])_([12])", moe_name)
    if m:
        return f"{m[1]}.w_{m[3]}.{'weight' if m[2] == 'w' else 'bias'}"
    return moe_name


def test_upcycled_model_decays_what_the_dense_model_decayed() -> None:
    torch.manual_seed(0)
    dense = ASRModel(tiny_model_cfg(), VOCAB)
    moe = ASRModel(tiny_model_cfg(MoEConfig(num_experts=4, top_k=2, groups=2)), VOCAB)
    dense_decay = _decayed(param_groups(dense, 0.01), dense)
    moe_decay = _decayed(param_groups(moe, 0.01, moe_lr_scale=3.0), moe)
    assert len(moe_decay) == len(list(moe.parameters()))
    routers = [n for n in moe_decay if ".router." in n]
    assert routers and not any(moe_decay[n] for n in routers)
    biases = [n for n in moe_decay if re.search(r"\.experts\.b_[12]$", n)]
    assert biases and not any(moe_decay[n] for n in biases)  # 2-D after stacking, not decayed
    for n, d in moe_decay.items():
        src = _dense_name(n)
        if src is not None:
            assert d == dense_decay[src], n
    # the dense model decays what it always did (matrices: layer weights and relative-position
    # biases; no bias vector or norm), so dense training is unchanged by the role rule
    assert dense_decay == {n: p.dim() > 1 for n, p in dense.named_parameters()}
    assert dense_decay["encoder.blocks.0.self_attn.pos_bias_u"]
    assert not any(d for n, d in dense_decay.items() if n.endswith(".bias") or "norm" in n)


def test_any_model_param_groups_leave_biases_and_routers_undecayed() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 32), nn.GELU(),
                          nn.Linear(32, 8))  # fmt: skip
    ume.upcycle(model, 4, 2)
    assert isinstance(model[2], MoEEntry)
    rule = decay_rule(model)
    assert rule == {
        "0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False,
        "2.weight": True, "2.bias": False, "2.router.weight": False,
        "4.weight": True, "4.bias": False,
    }  # fmt: skip
    ume.freeze(model, "moe")
    groups = ume.param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == 5  # only the trainable ones
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as is
