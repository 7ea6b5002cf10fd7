"""DDP plumbing for the trainer: joining the process group, collective decisions, RNG gathering,
and rank-reduced MoE balancing statistics.

Every function here that takes part in a collective must be called by every rank at the same
point, or the ranks hang; with one process (no process group) each is a cheap local no-op.

Example:
    >>> rank, world, device = setup_distributed("auto")   # torchrun: NCCL on GPUs, gloo on CPUs
    >>> bad_ranks = ranks_where(not torch.isfinite(loss), device)   # [] on every rank, or e.g. [1]
    >>> others = gather_rank_rngs(tensors, py_state, device)        # rank 0: states of ranks 1..W-1
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ume.device import ddp_backend, resolve_device

_PY_KEY = "__python_numpy_json__"  # the python/numpy RNG state as UTF-8 JSON bytes


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Resolve `device` ('cpu' | 'cuda' | 'auto') and, when torchrun launched more than one
    process, join the process group: NCCL on CUDA (each process on the GPU of its LOCAL_RANK),
    gloo on CPU. Returns (rank, world, device)."""
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(ddp_backend(dev))
    rank, world = dist_info()
    return rank, world, dev


def teardown_distributed() -> None:
    """Leave the process group (all ranks, after the last collective). A rank that exits with
    the group still alive can die at interpreter shutdown ("terminate called without an active
    exception", SIGABRT) while gloo's threads run, failing a torchrun job that had finished."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


def ranks_where(flag: bool, device: torch.device) -> list[int]:
    """Collective: the ranks on which `flag` is true (the same list on every rank)."""
    rank, world = dist_info()
    if world == 1:
        return [0] if flag else []
    v = torch.zeros(world, device=device)
    v[rank] = float(flag)
    dist.all_reduce(v)  # SUM of one-hot rows
    return [r for r in range(world) if v[r] > 0]


def gather_rank_rngs(
    tensors: dict[str, torch.Tensor], py_state: dict, device: torch.device
) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """Collective: every rank's (RNG tensors, python/numpy state); rank 0 gets those of ranks
    1..W-1 (its own it has), the others get []. Sent as safetensors bytes, never pickled."""
    rank, world = dist_info()
    if world == 1:
        return []
    blob = dict(tensors)
    blob[_PY_KEY] = torch.frombuffer(bytearray(json.dumps(py_state).encode()), dtype=torch.uint8)
    data = torch.frombuffer(
        bytearray(st_save({k: v.cpu() for k, v in blob.items()})), dtype=torch.uint8
    )
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    if rank != 0:
        return []
    out = []
    for r in range(1, world):
        t = st_load(parts[r][: int(sizes[r].item())].cpu().numpy().tobytes())
        py = json.loads(t.pop(_PY_KEY).numpy().tobytes().decode())
        out.append((t, py))
    return out


def reduced_moe_stats(model: torch.nn.Module, device: torch.device) -> dict[str, dict]:
    """Collective: {layer name: {stat: tensor}} of every MoE layer's last forward, averaged over
    ranks (each rank routes its own batch; rank 0's alone is a 1/W sample). The load's
    coefficient of variation is recomputed from the averaged load, not averaged."""
    _, world = dist_info()
    layers = []
    for name, m in model.named_modules():
        stats = getattr(m, "last_stats", None)
        if stats:
            layers.append((name, {k: v for k, v in stats.items() if torch.is_tensor(v)}))
    if world > 1:
        # every rank has the same layers and keys (same model); one flat all-reduce for all
        flat = [v.detach().float().reshape(-1).to(device) for _, st in layers for v in st.values()]
        if flat:
            buf = torch.cat(flat)
            dist.all_reduce(buf)
            buf /= world
            i = 0
            for _, st in layers:
                for k, v in st.items():
                    st[k] = buf[i : i + v.numel()].reshape(v.shape).cpu()
                    i += v.numel()
    out = {}
    for name, st in layers:
        load = st.get("load")
        if world > 1 and load is not None and "cv" in st and load.numel() > 1:
            st["cv"] = load.std(unbiased=False) / load.mean().clamp_min(1e-9)  # as moe.py
        out[name] = st
    return out
