"""Trainer guards that need no training run: an epoch without batches is an error (it used to
spin the epoch counter forever), and every rank gets the same number of batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ume.config import load_config, preset_config
from ume.data.loader import BucketSampler
from ume.errors import UmeError
from ume.train.targets import ctc_targets
from ume.train.trainer import Trainer, TrainState


class CountingSampler(BucketSampler):
    """Stops a runaway epoch loop (the bug) with an error the test can tell apart."""

    calls = 0

    def epoch_batches(self, *a, **k):
        self.calls += 1
        if self.calls > 50:
            raise RuntimeError("looped over empty epochs")
        return super().epoch_batches(*a, **k)


def _stub(lengths: list[int], rank: int = 0, world: int = 1) -> Trainer:
    tr = Trainer.__new__(Trainer)  # only what batches() reads
    tr.cfg = load_config(preset_config("tiny"))
    tr.state = TrainState()
    tr.sampler = CountingSampler(lengths, max_frames=1000, max_batch=4, seed=0)
    tr.rank, tr.world = rank, world
    tr.train_idx = list(range(len(lengths)))
    tr.train_store = SimpleNamespace(skipped=["u1: 3 tokens for 2 encoder frames"])
    return tr


def test_epoch_without_batches_is_an_error() -> None:
    tr = _stub([])  # every utterance filtered out
    with pytest.raises(UmeError, match="no training batches"):  # a ValueError, told as one line
        next(tr.batches())
    assert tr.state.epoch == 0


def test_ctc_targets_keeps_alignable_utterances_and_names_the_rest() -> None:
    class Embed:  # 4x subsampling: frames // 4
        def output_lengths(self, n):
            return n // 4

    class Tok:
        def encode(self, text):
            return [ord(c) for c in text]

    utts = [SimpleNamespace(key=k, text=t) for k, t in [("a", "xy"), ("b", "xyz"), ("c", "")]]
    store = SimpleNamespace(utts=utts, lengths=[8, 8, 100], skipped=["earlier"])
    keep, tokens = ctc_targets(store, Tok(), Embed(), subsampling=4)
    assert keep == [0] and tokens == [[ord("x"), ord("y")]]
    assert store.skipped == [
        "earlier",
        "b: 3 tokens for 2 encoder frames (x4); too short for CTC",
        "c: 0 tokens for 25 encoder frames (x4); too short for CTC",
    ]


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_more_ranks_than_batches_is_an_error_on_every_rank(rank: int) -> None:
    tr = _stub([100, 100, 100, 100, 900], rank=rank, world=3)  # 2 batches for 3 ranks
    assert len(tr.sampler) == 2
    with pytest.raises(ValueError, match=f"rank {rank} of 3"):
        next(tr.batches())


def test_ranks_get_equal_batch_counts() -> None:
    s = BucketSampler([100] * 4 * 5, max_frames=400, max_batch=4, seed=0)  # 5 batches
    per_rank = [s.epoch_batches(0, rank=r, world=2) for r in range(2)]
    assert [len(b) for b in per_rank] == [2, 2]
    one = BucketSampler([100] * 3, max_frames=400, max_batch=4, seed=0)  # 1 batch, 2 ranks
    assert [one.epoch_batches(0, rank=r, world=2) for r in range(2)] == [[], []]
