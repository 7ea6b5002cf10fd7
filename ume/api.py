"""The public Python API: upcycle any PyTorch model, train it with the balancing losses, freeze
by phase, save and load. Re-exported lazily by `ume/__init__.py` (`import ume` stays light).

Example:
    >>> import ume
    >>> model = ume.upcycle(model, num_experts=8, top_k=2, ffn="auto", verify_input=batch)
    >>> loss = task_loss + ume.aux_loss(model)       # balance + z-loss of the last forward
    >>> ume.freeze(model, trainable="moe")           # UME phase 1: experts + routers learn
    >>> opt = torch.optim.AdamW(ume.param_groups(model, 0.01), lr=1e-4)  # decay by role
    >>> ume.save(model, "moe_dir")                   # model.safetensors + moe_layout.json
    >>> model = ume.load("moe_dir", DenseArch(cfg))  # same architecture, freshly built
    >>> with ume.valid_frames(model.encoder, ~pad_mask):  # padded batch: stats skip padding
    ...     out = model(batch)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ume.atomic import atomic_path, atomic_write_text
from ume.errors import UmeError
from ume.model.moe import MoEFeedForward
from ume.model.moe_split import MoEEntry, MoEExit, MoERouter
from ume.model.weight_decay import decay_rule
from ume.upcycle.any_model import (  # noqa: F401 - upcycle is the public ume.upcycle
    UpcycleAnyError,
    apply_layout,
    routers,
    upcycle,
)

WEIGHTS_FILE = "model.safetensors"
LAYOUT_FILE = "moe_layout.json"


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of every MoE layer's auxiliary losses (Switch balance + router z-loss, already
    scaled by their coefficients) from the model's last forward in training mode; a zero
    tensor in eval mode.

    Example:
        >>> loss = task_loss + ume.aux_loss(model)
    """
    rs = routers(model)
    if not rs:
        raise UpcycleAnyError("the model has no MoE layers: call ume.upcycle(model, ...) first")
    terms = [t for r in rs for t in r.aux_losses.values()]
    if not terms:
        p = next(model.parameters())
        return torch.zeros((), device=p.device, dtype=torch.float32)
    return torch.stack([t.float() for t in terms]).sum()


@contextmanager
def valid_frames(module: nn.Module, valid: torch.Tensor) -> Iterator[None]:
    """Within the block, the MoE layers of `module` (those `ume.upcycle` split at an FFN's
    projections) count only tokens where `valid` is True in their balance loss, z-loss and
    load: padding is still computed, exactly as by the dense FFN, but no longer balanced.

    valid: (B, T) bool (True = a real frame), the token shape the FFNs of `module` see; pass
    the submodule whose FFNs see that sequence (a seq2seq model's encoder and decoder have
    different lengths). A layer that routes another number of tokens raises UmeError.
    (ume's own MoEFeedForward takes its mask from ume's models and is left as it is.)

    Example:
        >>> with ume.valid_frames(model.encoder, lengths_mask):   # (B, T) bool
        ...     loss = task_loss_fn(model(x)) + ume.aux_loss(model)
    """
    if valid.dtype != torch.bool:
        raise TypeError(f"ume.valid_frames: valid must be a bool mask, got {valid.dtype}")
    rs = [r for r in module.modules() if isinstance(r, MoERouter)]
    if not rs:
        raise UpcycleAnyError(
            "ume.valid_frames: the module has no split MoE layers (call ume.upcycle first)"
        )
    for r in rs:
        r.valid = valid
    try:
        yield
    finally:
        for r in rs:
            r.valid = None


def _moe_params(model: nn.Module, routers_only: bool) -> set[int]:
    ids: set[int] = set()
    for m in model.modules():
        if isinstance(m, MoEFeedForward):
            mods = [m.router] if routers_only else [m]
        elif isinstance(m, MoERouter):
            mods = [m]
        elif isinstance(m, MoEEntry | MoEExit) and not routers_only:
            mods = [m]
        else:
            continue
        ids.update(id(p) for mod in mods for p in mod.parameters())
    return ids


def freeze(model: nn.Module, trainable: str | list[str] = "moe") -> tuple[int, int]:
    """Set requires_grad for a UME training phase; returns (trainable, total) parameter counts.

    trainable: "moe" (experts and routers learn, the rest is frozen: UME phase 1), "router"
               (routers only), "all" (phase 2), or a list of parameter-name prefixes, where
               the entry "moe" adds the MoE parameters.

    Example:
        >>> ume.freeze(model, "moe")   # phase 1 ... then ume.freeze(model, "all")
    """
    if trainable == "all":
        keep = None
    elif trainable in ("moe", "router"):
        keep = _moe_params(model, trainable == "router")
        prefixes: tuple[str, ...] = ()
    elif isinstance(trainable, list | tuple) and all(isinstance(x, str) for x in trainable):
        keep = _moe_params(model, False) if "moe" in trainable else set()
        prefixes = tuple(x for x in trainable if x != "moe")
    else:
        raise UmeError(
            f"trainable={trainable!r}: use 'moe', 'router', 'all' or a list of parameter-name "
            "prefixes (may include 'moe')"
        )
    n_train = n_total = 0
    for name, p in model.named_parameters():
        on = keep is None or id(p) in keep or (bool(prefixes) and name.startswith(prefixes))
        p.requires_grad_(on)
        n_total += p.numel()
        n_train += p.numel() if on else 0
    if n_train == 0:
        raise UmeError(f"trainable={trainable!r} selects no parameter (is the model upcycled?)")
    return n_train, n_total


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters: [{"params": [...],
    "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}] (empty groups left
    out), decayed by role (ume/model/weight_decay.py): Linear/Conv/Embedding weights and
    expert weights decay; biases (stacked expert biases too), norms and routers do not. An
    upcycled model so decays what the usual dense recipe decays and leaves the new routers
    free (decay would pull them towards uniform routing).

    Example:
        >>> opt = torch.optim.AdamW(ume.param_groups(model, weight_decay=0.01), lr=1e-4)
    """
    rule = decay_rule(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if rule[n]], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not rule[n]], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `path/model.safetensors` (all weights) and `path/moe_layout.json` (which FFNs are
    MoE, with which projections and settings) for a model upcycled by `ume.upcycle`. Each
    file is written to a temporary name and renamed, so a crash never leaves a torn file.

    Example:
        >>> ume.save(model, "runs/whisper_moe")
    """
    from safetensors.torch import save_model

    layout = getattr(model, "ume_moe_layout", None)
    if layout is None:
        raise UpcycleAnyError(
            "the model carries no MoE layout: save models upcycled by ume.upcycle (ume's own "
            "experiment dirs are written by `ume train` / `ume upcycle`)"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_model(model, str(tmp), metadata={"format": "pt", "ume_layout": LAYOUT_FILE})
    atomic_write_text(out / LAYOUT_FILE, json.dumps(layout, indent=2) + "\n")
    return out


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by `ume.save` into `model`, a freshly built DENSE model of the
    original architecture and config (the layout is re-applied to it, then every weight is
    loaded strictly: a missing, unexpected or differently shaped tensor is an error, raised
    before any weight is copied, with `model` left exactly as it was); returns it in eval mode.
    Without `model`, `path` must be a ume experiment dir (`ume train`/`ume upcycle` output),
    whose config builds the model. Nothing is unpickled.

    Example:
        >>> model = ume.load("runs/whisper_moe", transformers.WhisperModel(cfg))
        >>> model = ume.load("runs/ume")  # a ume experiment dir
    """
    from safetensors.torch import load_model

    root = Path(path)
    if model is None:
        if (root / "config.yaml").is_file():
            from ume.expdir import load_experiment

            return load_experiment(root)[2]
        raise UpcycleAnyError(
            f"ume.load({str(path)!r}) needs the original architecture for a model saved by "
            "ume.save: build the dense model as before upcycling and call ume.load(path, model)"
        )
    for f in (WEIGHTS_FILE, LAYOUT_FILE):
        if not (root / f).is_file():
            raise UpcycleAnyError(f"{root / f} is missing: not a directory written by ume.save")
    try:
        layout = json.loads((root / LAYOUT_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UpcycleAnyError(f"{root / LAYOUT_FILE} is not valid JSON: {e}") from e
    undo = apply_layout(model, layout)
    try:
        _check_weights(model, root / WEIGHTS_FILE)
    except Exception:
        undo()  # leave the caller's model as it was
        raise
    load_model(model, str(root / WEIGHTS_FILE), strict=True)
    return model.eval()


def _check_weights(model: nn.Module, path: Path) -> None:
    """Raise UpcycleAnyError unless the file at `path` holds exactly the model's state dict
    (names and shapes; a name missing from the file is fine when it shares its tensor with one
    the file has, as safetensors stores tied weights once). Reads only the file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable header is the same user error
        raise UpcycleAnyError(f"{path} is not a readable safetensors file: {e}") from e
    sd = model.state_dict()
    stored = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)
              for k, t in sd.items() if k in shapes}  # fmt: skip
    missing = [
        k for k, t in sd.items()
        if k not in shapes
        and (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape) not in stored
    ]  # fmt: skip
    unexpected = [k for k in shapes if k not in sd]
    wrong = [
        f"{k} {shapes[k]} vs model {tuple(sd[k].shape)}"
        for k in shapes
        if k in sd and shapes[k] != tuple(sd[k].shape)
    ]
    if missing or unexpected or wrong:
        raise UpcycleAnyError(
            f"{path} does not match the model (built with another config?); the model is "
            "left as it was\n"
            f"  missing from file ({len(missing)}): {sorted(missing)[:10]}\n"
            f"  unexpected in file ({len(unexpected)}): {sorted(unexpected)[:10]}\n"
            f"  shapes differ ({len(wrong)}): {sorted(wrong)[:10]}"
        )
