"""Atomic, pickle-free training checkpoints and checkpoint averaging.

A checkpoint is a directory `checkpoints/step-00000200/` holding
    model.safetensors   model weights
    optim.safetensors   AdamW moments keyed by parameter *name* (survives freezing changes)
    rng.safetensors     rank 0's torch CPU (and CUDA) RNG state and SpecAugment generator state
    state.json          step, epoch, position in epoch, lr-schedule step, rank 0's python/numpy
                        RNG, train seconds, dev curve, phase index, world_size
    rng-rank{R}.safetensors, rng-rank{R}.json
                        the same RNG states of every other DDP rank R (gathered to rank 0, which
                        alone writes), so each rank resumes its own dropout/SpecAugment stream
It is written to `step-N.tmp/` and renamed into place, so a crash mid-write leaves the previous
checkpoint as the newest complete one. Old checkpoints are deleted by recency (`keep` newest),
except those named in `protect` (the best by dev MER when averaging by best).

Example:
    >>> save_checkpoint(exp / "checkpoints", step, model, optimizer, state, rng)
    >>> ck = latest_checkpoint(exp / "checkpoints")
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ume.atomic import fsync_tree, publish
from ume.data.loader import numpy_seed_everything

PREFIX = "step-"


def _name_of(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def optimizer_tensors(
    opt: torch.optim.Optimizer, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Flatten optimizer state into {'<param name>/<state key>': tensor}."""
    names = _name_of(model)
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in st.items():
                t = v if torch.is_tensor(v) else torch.tensor(v)
                out[f"{names[id(p)]}/{k}"] = t.detach().cpu().contiguous()
    return out


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, model: torch.nn.Module, tensors: dict[str, torch.Tensor]
) -> None:
    """Restore per-parameter state for the parameters this optimizer holds."""
    names = _name_of(model)
    for group in opt.param_groups:
        for p in group["params"]:
            prefix = names[id(p)] + "/"
            # moments live beside their parameter (GPU); AdamW's scalar `step` stays on the CPU
            st = {
                k[len(prefix) :]: v.clone() if v.dim() == 0 else v.to(p.device, copy=True)
                for k, v in tensors.items()
                if k.startswith(prefix)
            }
            if st:
                opt.state[p] = st


def python_rng_state() -> dict:
    ver, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [ver, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_python_rng_state(d: dict) -> None:
    ver, state, gauss = d["python"]
    random.setstate((ver, tuple(state), gauss))
    n = d["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def rng_state(device: torch.device, augment: torch.Generator) -> dict[str, torch.Tensor]:
    """This process's torch RNG states: CPU, SpecAugment generator, and CUDA when training there
    (dropout on the GPU draws from the device generator)."""
    rng = {"torch": torch.get_rng_state(), "augment": augment.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(
    r: dict[str, torch.Tensor], py: dict, device: torch.device, augment: torch.Generator
) -> None:
    """Inverse of rng_state + python_rng_state."""
    torch.set_rng_state(r["torch"])
    augment.set_state(r["augment"])
    if device.type == "cuda" and "cuda" in r:
        torch.cuda.set_rng_state(r["cuda"], device)
    set_python_rng_state(py)


def reseed_rank(
    seed: int, step: int, rank: int, device: torch.device, augment: torch.Generator
) -> None:
    """Re-seed this rank's python/numpy/torch and SpecAugment streams from (seed, step, rank):
    the documented fallback when a checkpoint is resumed by another number of processes, whose
    saved per-rank streams cannot be mapped onto the new ranks (the run continues correctly
    but is not bit-identical to an uninterrupted one)."""
    s = seed + 1000003 * step + rank
    numpy_seed_everything(s)  # python, numpy, torch
    augment.manual_seed(s * 7)
    if device.type == "cuda":
        torch.cuda.manual_seed(s)


def best_checkpoints(ck_dir: Path, mer: dict[str, float], writing: str, n: int) -> set[str]:
    """Names of the n checkpoints with the lowest dev MER among those that exist in ck_dir or
    are being written (`writing`); evaluation points without a checkpoint do not count."""
    have = {c.name for c in list_checkpoints(ck_dir)} | {writing}
    scored = {k: v for k, v in mer.items() if k in have}
    return set(sorted(scored, key=lambda k: (scored[k], k))[:n])


def checkpoints_to_average(
    ck_dir: Path, mer: dict[str, float], average_by: str, n: int
) -> list[Path]:
    """The complete checkpoints a finished run averages: with average_by "best" and dev scores
    (`mer`: checkpoint name -> dev MER), the n lowest-MER ones among those still on disk (the
    ones `best_checkpoints` kept from pruning); otherwise the n newest."""
    cks = list_checkpoints(ck_dir)
    if average_by == "best" and mer:
        scored = [c for c in cks if c.name in mer]
        return sorted(scored, key=lambda c: mer[c.name])[:n]
    return cks[-n:]


def save_checkpoint(
    ck_dir: Path,
    step: int,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    state: dict,
    rng: dict[str, torch.Tensor],
    keep: int = 5,
    protect: frozenset[str] | set[str] = frozenset(),
    rank_rngs: list[tuple[dict[str, torch.Tensor], dict]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically; delete all but the `keep` newest (never those whose
    names are in `protect`). `rng`/python RNG are this process's (rank 0); `rank_rngs` holds
    (tensors, python/numpy state) of ranks 1..W-1 under DDP."""
    ck_dir = Path(ck_dir)
    ck_dir.mkdir(parents=True, exist_ok=True)
    final = ck_dir / f"{PREFIX}{step:08d}"
    tmp = ck_dir / f"{PREFIX}{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(tmp / "model.safetensors"),
    )
    save_file(optimizer_tensors(opt, model), str(tmp / "optim.safetensors"))
    save_file({k: v.cpu().contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
    others = rank_rngs or []
    for r, (tensors, py) in enumerate(others, start=1):
        save_file(
            {k: v.cpu().contiguous() for k, v in tensors.items()},
            str(tmp / f"rng-rank{r}.safetensors"),
        )
        _write_json(tmp / f"rng-rank{r}.json", py)
    _write_json(
        tmp / "state.json", {**state, "rng": python_rng_state(), "world_size": 1 + len(others)}
    )
    fsync_tree(tmp)  # every file durable before the rename makes the checkpoint visible
    if final.exists():
        shutil.rmtree(final)
    publish(tmp, final)
    old = list_checkpoints(ck_dir)[:-keep] if keep > 0 else []
    for p in old:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
    return final


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def read_rank_rng(ck: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(RNG tensors, python/numpy state) that `rank` saved in checkpoint `ck`."""
    if rank == 0:
        return load_file(str(ck / "rng.safetensors")), read_state(ck)["rng"]
    path = ck / f"rng-rank{rank}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{ck} has no RNG state for rank {rank} ({path.name} missing)")
    with open(ck / f"rng-rank{rank}.json", encoding="utf-8") as f:
        return load_file(str(path)), json.load(f)


def list_checkpoints(ck_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs from interrupted writes are ignored)."""
    ck_dir = Path(ck_dir)
    if not ck_dir.is_dir():
        return []
    done = [
        p
        for p in ck_dir.iterdir()
        if p.is_dir()
        and p.name.startswith(PREFIX)
        and not p.name.endswith(".tmp")
        and (p / "state.json").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(ck_dir: Path) -> Path | None:
    cks = list_checkpoints(ck_dir)
    return cks[-1] if cks else None


def read_state(ck: Path) -> dict:
    with open(ck / "state.json", encoding="utf-8") as f:
        return json.load(f)


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of model weights (integer buffers taken from the newest)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    avg: dict[str, torch.Tensor] = {}
    for p in paths:
        sd = load_file(str(p / "model.safetensors"))
        for k, v in sd.items():
            if v.is_floating_point():
                avg[k] = avg[k] + v.double() if k in avg else v.double()
            else:
                avg[k] = v
    n = len(paths)
    return {k: (v / n).float() if v.is_floating_point() else v for k, v in avg.items()}
