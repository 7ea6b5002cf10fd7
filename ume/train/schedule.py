"""Learning-rate schedule and layer-freezing phases.

A freezing schedule is a list of phases, each `steps` long (the last may be 0 = open-ended),
naming what is trainable. Parameters outside it get requires_grad=False (no gradient is computed)
and are left out of the optimizer, so they stay bit-identical through the phase; a BatchNorm whose
parameters are all frozen is also held in eval mode (ASRModel.train, ume/model/frozen.py), so its
running statistics stay bit-identical too. Branches that no loss reaches (loss_free_prefixes)
are frozen in every phase.

Example:
    >>> phases = [PhaseConfig(steps=300, trainable="moe"), PhaseConfig(steps=0, trainable="all")]
    >>> phase_at(phases, 10)        # -> (0, phases[0])
    >>> apply_trainable(model, "moe")  # experts + routers learn, the rest is frozen
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ume.config import ModelConfig, PhaseConfig, TrainConfig
from ume.errors import UmeError
from ume.model.weight_decay import decay_rule


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier on cfg.lr for a step: linear warmup, then inverse-sqrt decay ("noam"), flat
    ("constant"), or a half cosine down to 0 at cfg.max_steps ("cosine", for continued training
    of a converged model: it anneals by the end of the run, as the model it starts from did)."""
    warm = max(1, cfg.warmup_steps)
    if cfg.lr_schedule not in ("noam", "constant", "cosine"):
        raise UmeError(f"train.lr_schedule={cfg.lr_schedule!r}: use 'noam', 'constant' or 'cosine'")
    if cfg.lr_schedule == "cosine" and cfg.max_steps <= warm:
        raise UmeError(
            f"train.lr_schedule='cosine' decays over train.max_steps={cfg.max_steps}, which "
            f"must exceed train.warmup_steps={cfg.warmup_steps}"
        )

    def f(step: int) -> float:
        s = step + 1
        if s < warm:
            return s / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "noam":
            return math.sqrt(warm / s)
        progress = min(1.0, (s - warm) / (cfg.max_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def phase_at(phases: list[PhaseConfig], step: int) -> tuple[int, PhaseConfig]:
    """(index, phase) active at `step` (0-based). No phases -> everything trainable."""
    if not phases:
        return 0, PhaseConfig(steps=0, trainable="all")
    start = 0
    for i, p in enumerate(phases):
        if p.steps <= 0 or step < start + p.steps:
            return i, p
        start += p.steps
    return len(phases) - 1, phases[-1]


def is_moe_param(name: str) -> bool:
    return ".experts." in name or ".router." in name or name.endswith((".experts", ".router"))


def trainable_predicate(spec: object, num_blocks: int) -> Callable[[str], bool]:
    """Turn a phase's `trainable` value into a name -> bool predicate."""
    if spec == "all":
        return lambda n: True
    if spec == "moe":
        return is_moe_param
    if spec == "router":
        return lambda n: ".router." in n or n.endswith(".router")
    if isinstance(spec, str) and spec.startswith("top:"):
        try:
            top = int(spec.split(":", 1)[1])
        except ValueError as e:
            raise UmeError(f"trainable={spec!r}: use top:N with an integer N") from e
        first = max(0, num_blocks - top)
        prefixes = tuple(f"encoder.blocks.{i}." for i in range(first, num_blocks))
        return lambda n: is_moe_param(n) or n.startswith(prefixes + ("ctc.", "decoder."))
    if isinstance(spec, list) and all(isinstance(x, str) for x in spec):
        pre = tuple(x for x in spec if x != "moe")
        want_moe = "moe" in spec
        return lambda n: n.startswith(pre) or (want_moe and is_moe_param(n))
    raise UmeError(
        f"trainable={spec!r}: use 'all', 'moe', 'router', 'top:N' or a list of parameter-name "
        "prefixes such as ['encoder.blocks.5.', 'ctc.']"
    )


def loss_free_prefixes(cfg: ModelConfig) -> tuple[str, ...]:
    """Parameter-name prefixes of the branches no loss term reaches, which the model does not run
    in training: the attention decoder at ctc_weight 1, its right-to-left half at
    reverse_weight 0, the CTC head at ctc_weight 0. They stay frozen (as WeNet leaves them), so
    DDP expects no gradient from them."""
    out = []
    if cfg.ctc_weight >= 1.0:
        out.append("decoder.")
    elif cfg.reverse_weight <= 0.0:
        out.append("decoder.right.")
    if cfg.ctc_weight <= 0.0:
        out.append("ctc.")
    return tuple(out)


def apply_trainable(
    model: torch.nn.Module, spec: object, num_blocks: int, exclude: tuple[str, ...] = ()
) -> tuple[int, int]:
    """Set requires_grad by the spec, False for names starting with an `exclude` prefix;
    returns (trainable, total) parameter counts."""
    pred = trainable_predicate(spec, num_blocks)
    n_train = n_total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(pred(name) and not name.startswith(exclude))
        n_total += p.numel()
        n_train += p.numel() if p.requires_grad else 0
    if n_train == 0:
        raise UmeError(
            f"trainable={spec!r} selects no parameters of this model "
            "(e.g. 'moe' on a dense model): fix the freezing schedule"
        )
    return n_train, n_total


def param_groups(
    model: torch.nn.Module, weight_decay: float, moe_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: weight decay by each parameter's
    role (ume/model/weight_decay.py: layer weights yes; biases, norms and routers no; stacked
    experts as the dense FFN they came from), and experts + routers (is_moe_param) in groups
    whose lr is scaled by moe_lr_scale (a faster expert lr breaks the symmetry of upcycled
    experts; see PhaseConfig.moe_lr_scale)."""
    rule = decay_rule(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for decay in (True, False):
        for moe in (False, True):
            ps = [p for n, p in named if rule[n] == decay and is_moe_param(n) == moe]
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "weight_decay": weight_decay if decay else 0.0,
                        "lr_scale": moe_lr_scale if moe else 1.0,
                    }
                )
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to lr x its lr_scale (1 where a group has none)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
