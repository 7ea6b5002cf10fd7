"""The bias-filled no-graph dispatch (`dispatch_fast_small`, short inputs): bit-identical to the
sorted loop and to the graph path, and taken only below its measured buffer size."""

from __future__ import annotations

import pytest
import torch

from ume.config import MoEConfig
from ume.model import moe_dispatch
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions

LOOP = DispatchOptions(small_max_bytes=0, padded_max_rows=0)  # the sorted loop only
SMALL = DispatchOptions(small_max_bytes=2**40, padded_max_rows=0)  # always bias-filled


def uneven_layer(k: int, dropout: float = 0.0) -> MoEFeedForward:
    """E 8; token i -> expert i % 7 first, (i + 1) % 7 second; expert 7 gets no token."""
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=8, top_k=k, router_init="normal", router_init_std=1.0)
    moe = MoEFeedForward(32, 48, "swish", dropout, cfg).eval()
    with torch.no_grad():
        w = torch.zeros(8, 32)
        for i in range(32):
            w[i % 7, i], w[(i + 1) % 7, i] = 2.0, 1.0
        w[7] = -100.0
        moe.router.weight.copy_(w)
    return moe


def run(moe: MoEFeedForward, opts: DispatchOptions, *args: torch.Tensor) -> torch.Tensor:
    moe.dispatch_options = opts
    with torch.inference_mode():
        return moe(*args)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_small_path_is_bitwise_equal_to_loop_and_graph(k: int, monkeypatch) -> None:
    moe = uneven_layer(k)
    calls: list[int] = []
    real = moe_dispatch.dispatch_fast_small
    monkeypatch.setattr(moe_dispatch, "dispatch_fast_small", lambda *a: calls.append(1) or real(*a))
    x = torch.eye(32)[:29].repeat(2, 1).view(2, 29, 32) + 0.01 * torch.rand(2, 29, 32)
    valid = torch.ones(2, 29, dtype=torch.bool)
    valid[1, 20:] = False
    small = run(moe, SMALL, x, valid)
    load = moe.last_stats["load"]
    assert calls == [1]
    loop = run(moe, LOOP, x, valid)
    assert calls == [1]  # the loop did not take it
    moe.dispatch_options = DispatchOptions()
    graph = moe(x.clone().requires_grad_(True), valid).detach()
    assert float(load[7]) == 0.0  # an expert without rows is skipped
    assert torch.equal(small, loop)
    assert torch.equal(small, graph)
    assert torch.all(small[1, 20:] == 0)


def test_small_path_bfloat16_equal_to_loop() -> None:
    moe = uneven_layer(2).to(torch.bfloat16)
    x = torch.randn(1, 40, 32, dtype=torch.bfloat16)
    assert torch.equal(run(moe, SMALL, x), run(moe, LOOP, x))


def test_small_path_dropout_draws_the_loops_masks() -> None:
    """Training-mode forward without a graph (e.g. a no_grad evaluation in train mode): same
    dropout masks, same order, so the same output for the same seed."""
    moe = uneven_layer(2, dropout=0.3).train()
    x = torch.randn(1, 40, 32)
    torch.manual_seed(5)
    small = run(moe, SMALL, x)
    torch.manual_seed(5)
    loop = run(moe, LOOP, x)
    torch.manual_seed(6)
    other = run(moe, LOOP, x)
    assert torch.equal(small, loop)
    assert not torch.equal(loop, other)  # dropout really ran


def test_small_path_taken_by_buffer_size(monkeypatch) -> None:
    """Default: short inputs (batch-1 decoding) take it, long ones the loop; 0 switches it off."""
    moe = uneven_layer(2)
    calls: list[int] = []
    real = moe_dispatch.dispatch_fast_small
    monkeypatch.setattr(
        moe_dispatch, "dispatch_fast_small", lambda *a: calls.append(a[1].size(0)) or real(*a)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the padded bmm (>= 2 threads) is not in the way
    try:
        opts = DispatchOptions()
        limit = opts.small_max_bytes // (2 * 48 * 4)  # tokens whose (2N, 48) fp32 buffer fits
        run(moe, opts, torch.randn(1, limit, 32))
        run(moe, opts, torch.randn(1, limit + 1, 32))
        run(moe, DispatchOptions(small_max_bytes=0), torch.randn(1, 8, 32))
    finally:
        torch.set_num_threads(threads)
    assert calls == [limit]
    use = moe_dispatch.use_small
    x = torch.zeros(1, 32)
    assert use(DispatchOptions(small_max_bytes=2 * 48 * 4), moe, x, 2)
    assert not use(DispatchOptions(small_max_bytes=2 * 48 * 4 - 1), moe, x, 2)
    with pytest.raises(ValueError, match="small_max_bytes"):
        DispatchOptions(small_max_bytes=-1)


def test_small_crossover_measures_both_paths() -> None:
    from ume.bench.moe import CROSSOVER_TOKENS, small_crossover

    rows = small_crossover(d=16, e=4, k=2, repeats=3, budget_s=0.01)
    assert [r["tokens"] for r in rows] == list(CROSSOVER_TOKENS)
    for r in rows:
        assert r["loop_ms"] > 0 and r["small_ms"] > 0
        assert r["ratio"] == pytest.approx(r["small_ms"] / r["loop_ms"], rel=0.02)
        assert r["buffer_mb"] == pytest.approx(2 * r["tokens"] * 64 * 4 / 2**20, abs=1e-3)
