"""What a training run counts, and the clock that fills its seconds.

`TrainState` is the part of a run that a checkpoint carries besides weights, optimizer and RNG
(ume/train/checkpoint.py writes it as state.json), so that a resumed run continues its step,
epoch position, timings, dev curve and phase exactly. `TrainClock` measures the wall and CPU
seconds of training steps only (evaluation and checkpointing are excluded by restarting it).

Example:
    >>> state, clock = TrainState(), TrainClock()
    >>> wall_s, cpu_s = clock.lap(); state.train_seconds += wall_s
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class TrainClock:
    """Wall and process-CPU seconds of training steps: `lap()` returns both since the last lap
    or `restart()`; restart after evaluating or checkpointing so that neither counts.

    Example:
        >>> clock = TrainClock(); wall_s, cpu_s = clock.lap()
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.time(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.time(), time.process_time()
        spent = (wall - self._wall, cpu - self._cpu)
        self._wall, self._cpu = wall, cpu
        return spent


@dataclass
class TrainState:
    """A run's counters between checkpoints; every field is saved and restored on resume."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # batches consumed in the current epoch (on this rank)
    train_seconds: float = 0.0  # wall-clock between steps (includes pauses, other processes)
    # this process's CPU time in the same steps, summed over its threads (time.process_time):
    # a pause (SIGSTOP, a suspended VM) or waiting for a busy core adds nothing; counted since
    # this field exists (a run resumed from an older checkpoint under-counts its earlier steps)
    train_cpu_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)  # {"step","minutes","dev_mer"}
    ckpt_mer: dict[str, float] = field(default_factory=dict)  # checkpoint name -> dev MER
    phase: int = 0
    skipped_batches: int = 0  # optimizer steps skipped (non-finite loss or gradient)
