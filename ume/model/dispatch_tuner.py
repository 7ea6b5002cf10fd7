"""The measured choice behind the "auto" MoE dispatch path: one process-wide table from a layer
shape to the dispatch path that was fastest for it.

A key is (experts, d_model, d_ff, dtype, device, slots bucket, graph): the bucket is the k·N
token-slots rounded up to a power of two, graph whether the call builds an autograd graph
(training) or not (inference). The first call with a key times every candidate on that layer's
real weights and input (`measure`: one warm-up call each, then `ROUNDS` interleaved timed calls,
the fastest call per candidate counts); later calls with the key look the winner up. The first
candidate (the default) keeps the key unless another is faster by more than `MARGIN`, so timing
noise does not flip a tie. Every candidate computes the same function (equal within float
rounding), so the choice changes speed, not results beyond rounding.

Example:
    >>> from ume.model.dispatch_tuner import chosen_paths, clear_chosen_paths
    >>> for key, choice in chosen_paths().items():
    ...     print(key, choice.path, choice.ms)
    >>> clear_chosen_paths()  # the next call of each shape measures again
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ume.device import sync

ROUNDS = 3
MARGIN = 0.03


@dataclass(frozen=True)
class ShapeKey:
    """What a measured choice is valid for."""

    experts: int
    d_model: int
    d_ff: int
    dtype: str  # the compute dtype (autocast's where autocast is on)
    device: str
    slots_bucket: int  # k·N token-slots rounded up to a power of two
    graph: bool  # autograd graph (forward + backward timed) or inference (forward timed)


@dataclass(frozen=True)
class Choice:
    """The winning path for a key and the fastest call of each candidate in milliseconds."""

    path: str
    ms: dict[str, float]


_TABLE: dict[ShapeKey, Choice] = {}
_LOCK = threading.Lock()


def slots_bucket(n_slots: int) -> int:
    """n_slots rounded up to a power of two (1 for 0 or 1)."""
    return 1 << max(n_slots - 1, 0).bit_length()


def chosen_paths() -> dict[ShapeKey, Choice]:
    """A copy of the table: every key measured in this process and its choice."""
    with _LOCK:
        return dict(_TABLE)


def clear_chosen_paths() -> None:
    """Forget every choice: the next call of each key measures again."""
    with _LOCK:
        _TABLE.clear()


def lookup(key: ShapeKey) -> Choice | None:
    """The remembered choice for `key`, or None before its first measurement."""
    with _LOCK:
        return _TABLE.get(key)


def remember(key: ShapeKey, choice: Choice) -> None:
    """Store a choice (a measurement, or a path forced because no other candidate may run)."""
    with _LOCK:
        _TABLE[key] = choice


def round_order(names: list[str], round_index: int) -> list[str]:
    """The order the candidates run in timing round `round_index`: rotated by one per round, so
    every candidate runs in every position equally often (a fixed order gives the first one
    the caches and frequency state the previous round's last one left behind)."""
    r = round_index % len(names) if names else 0
    return names[r:] + names[:r]


def measure(
    key: ShapeKey,
    candidates: dict[str, Callable[[], None]],
    device: torch.device,
    rounds: int = ROUNDS,
) -> Choice:
    """Time every candidate (name -> a call that runs it once), pick and remember the winner.
    The first candidate wins unless another's fastest call is more than MARGIN faster."""
    if not candidates:
        raise ValueError("measure() needs at least one candidate path")
    for fn in candidates.values():  # warm-up: allocator, kernel selection, first-touch pages
        fn()
    best = {name: float("inf") for name in candidates}
    for r in range(max(rounds, 1)):
        for name in round_order(list(candidates), r):
            fn = candidates[name]
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    default = next(iter(candidates))
    winner = min(best, key=best.get)
    if best[winner] >= best[default] * (1.0 - MARGIN):
        winner = default
    choice = Choice(winner, {name: round(ms, 4) for name, ms in best.items()})
    remember(key, choice)
    return choice
