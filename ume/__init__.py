"""ume: Upcycling Mixture-of-Experts for scalable, efficient bilingual ASR.

The public Python API (`import ume` does not import torch; each name loads its module on
first use):

    import ume
    model = ume.upcycle(model, num_experts=8, top_k=2, ffn="auto", verify_input=batch)
    loss = task_loss + ume.aux_loss(model)      # balance + z-loss of the last forward
    ume.freeze(model, trainable="moe")          # UME phase 1; "all" for phase 2
    opt = torch.optim.AdamW(ume.param_groups(model, weight_decay=0.01), lr=1e-4)
    with ume.valid_frames(model, mask): ...     # padded batches: statistics skip padding
    ume.save(model, "moe_dir"); model = ume.load("moe_dir", DenseArch(cfg))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily, PEP 562)
_LAZY = {
    # `ume.upcycle` is also the package ume/upcycle/, made callable (it calls any_model.upcycle):
    # importing a subpackage binds it here, so it must be the same object as the function
    "upcycle": "ume.upcycle",
    "aux_loss": "ume.api",
    "freeze": "ume.api",
    "param_groups": "ume.api",
    "save": "ume.api",
    "load": "ume.api",
    "valid_frames": "ume.api",
    "transcribe": "ume.decode.transcribe",
    "transcribe_segments": "ume.decode.transcribe",
    "bundled_model": "ume.bundled",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ume.api import (  # noqa: F401
        aux_loss,
        freeze,
        load,
        param_groups,
        save,
        upcycle,
        valid_frames,
    )


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ume' has no attribute {name!r}")
    module = importlib.import_module(mod)
    value = module if mod == f"ume.{name}" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
