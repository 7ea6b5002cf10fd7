"""Which parameters get weight decay: a rule by each parameter's role (the module that owns it
and its name in that module), so an upcycled model decays exactly what its dense model
decayed, plus nothing new.

    role                                          decays
    Linear / Conv / Embedding  weight             yes
    Linear / Conv              bias               no
    norms (LayerNorm, BatchNorm, GroupNorm, ...)  no
    RelPositionAttention  pos_bias_u, pos_bias_v  yes (as the dense model always did)
    MoE experts  w_1, w_2  (stacked Linear weights)   yes: the dense FFN's weights decayed
    MoE experts  b_1, b_2  (stacked Linear biases)    no: the dense FFN's biases did not,
                                                  although stacked they are 2-D
    split MoE entry/exit  weight / bias           yes / no (same reason)
    routers (Router, any MoE layer type)          no: new parameters the dense model did not
                                                  have; decay would pull a k-means router
                                                  towards uniform routing
    a parameter of any other module               yes for matrices (ndim ≥ 2), no otherwise
                                                  (the usual convention, for foreign models)

Example:
    >>> rule = decay_rule(model)             # {parameter name: decays}
    >>> [n for n, d in rule.items() if not d][:3]
    ['encoder.embed.conv.0.bias', ...]
"""

from __future__ import annotations

from torch import nn

from ume.model.attention import RelPositionAttention
from ume.model.moe import Experts
from ume.model.moe_split import MoEEntry, MoEExit
from ume.model.router import Router

_WEIGHT_LAYERS = (
    nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    MoEEntry, MoEExit,
)  # fmt: skip
_NORMS = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
)  # fmt: skip
_ROLES: dict[type, dict[str, bool]] = {
    Experts: {"w_1": True, "w_2": True, "b_1": False, "b_2": False},
    RelPositionAttention: {"pos_bias_u": True, "pos_bias_v": True},
}


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether `param`, registered as `name` directly on `module`, gets weight decay."""
    if isinstance(module, Router):
        return False
    if isinstance(module, _NORMS):
        return False
    if isinstance(module, _WEIGHT_LAYERS):
        return name == "weight"
    for cls, roles in _ROLES.items():
        if isinstance(module, cls) and name in roles:
            return roles[name]
    return param.dim() >= 2


def decay_rule(model: nn.Module) -> dict[str, bool]:
    """{parameter name (as in model.named_parameters()): decays} for every parameter."""
    out: dict[str, bool] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:  # a shared parameter keeps its first name's role
                continue
            seen.add(id(p))
            out[f"{mod_name}.{name}" if mod_name else name] = decays(mod, name, p)
    return out
