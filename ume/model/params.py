"""Parameter accounting: total parameters, the MoE layers of a model, and the parameters a token
actually uses (non-expert parameters plus k/E of each MoE layer's experts).

Example:
    >>> rep = param_report(model)
    >>> rep["params_total"], rep["params_expert"], rep["params_active"]
"""

from __future__ import annotations

from torch import nn

from ume.model.moe import MoEFeedForward


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def moe_layers(model: nn.Module) -> dict[str, MoEFeedForward]:
    """Module-name prefix -> MoE layer, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}


def param_report(model: nn.Module) -> dict:
    """Total parameters and parameters active per token (non-expert + k·G/E of each layer's
    experts)."""
    total = count_params(model)
    expert = active_expert = 0
    for moe in moe_layers(model).values():
        n = sum(p.numel() for p in moe.experts.parameters())
        expert += n
        active_expert += n * moe.slots_per_token / moe.num_experts
    return {
        "params_total": total,
        "params_expert": expert,
        "params_active": int(round(total - expert + active_expert)),
    }
