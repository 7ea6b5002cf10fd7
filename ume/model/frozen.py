"""Frozen modules keep computing what they computed before: a BatchNorm whose parameters are all
frozen (requires_grad False) is held in eval mode, so training steps neither update its running
mean/var (nor num_batches_tracked) nor normalise with batch statistics.

`requires_grad` alone stops gradients, not BatchNorm's running statistics, which `model.train()`
updates on every forward; a phase that freezes the backbone (trainable=moe) would otherwise still
change what the frozen conv modules compute. Call after every `train()` (ASRModel.train does).

Example:
    >>> for p in model.encoder.parameters(): p.requires_grad_(False)
    >>> model.train(); hold_frozen_norms(model)   # encoder BatchNorms stay in eval mode
"""

from __future__ import annotations

from torch import nn


def hold_frozen_norms(module: nn.Module) -> int:
    """Put every BatchNorm with affine parameters, all frozen, into eval mode; returns how many.

    A BatchNorm without parameters (affine=False) has nothing that says whether it is frozen and
    is left as it is."""
    held = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
                held += 1
    return held
