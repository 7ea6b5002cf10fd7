"""The "grouped" MoE dispatch path (torch._grouped_mm, forward and backward) and the "auto" path
(loop or grouped per shape, by measurement): equal to the loop, robust backward, capacity drops,
fallback to the loop where the operator does not qualify, the measured table."""

from __future__ import annotations

import pytest
import torch

from ume.config import MoEConfig
from ume.errors import UmeError
from ume.model import dispatch_tuner, grouped_ffn, moe_dispatch
from ume.model.dispatch_tuner import Choice, chosen_paths, clear_chosen_paths
from ume.model.grouped_ffn import cuda_native_grouped_mm, grouped_mm, grouped_mm_qualifies
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import PATHS, DispatchOptions

LOOP = DispatchOptions(path="loop")
GROUPED = DispatchOptions(path="grouped")
AUTO = DispatchOptions(path="auto")


@pytest.fixture(autouse=True)
def fresh_tables():
    clear_chosen_paths()
    grouped_ffn.forget_probes()
    yield
    clear_chosen_paths()
    grouped_ffn.forget_probes()


def uneven_layer(k: int, d: int = 32, h: int = 48, dropout: float = 0.0, **cfg) -> MoEFeedForward:
    """E 8; token i -> expert i % 7 first, (i + 1) % 7 second: uneven loads, expert 7 no rows."""
    torch.manual_seed(0)
    moe_cfg = MoEConfig(num_experts=8, top_k=k, router_init="normal", router_init_std=1.0, **cfg)
    moe = MoEFeedForward(d, h, "swish", dropout, moe_cfg).eval()
    with torch.no_grad():
        w = torch.zeros(8, d)
        for i in range(d):
            w[i % 7, i], w[(i + 1) % 7, i] = 2.0, 1.0
        w[7] = -100.0
        moe.router.weight.copy_(w)
    return moe


def inputs(n: int = 29, d: int = 32) -> torch.Tensor:
    """(2, n, d): one-hot-ish rows, so the router spreads tokens unevenly over experts 0..6."""
    eye = torch.eye(d)[torch.arange(n) % d]
    return eye.repeat(2, 1).view(2, n, d) + 0.01 * torch.rand(2, n, d)


def spy_grouped(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the grouped expert FFN (by the number of rows it got)."""
    calls: list[int] = []
    real = moe_dispatch.grouped_expert_ffn
    monkeypatch.setattr(
        moe_dispatch, "grouped_expert_ffn", lambda xs, *a: calls.append(xs.size(0)) or real(xs, *a)
    )
    return calls


def fwd_bwd(
    moe: MoEFeedForward, opts: DispatchOptions, x: torch.Tensor, grad: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and the gradients of the input and every parameter (grad None: y.sum())."""
    moe.dispatch_options = opts
    moe.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    y = moe(xg)
    (y.sum() if grad is None else (y * grad).sum()).backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    return y.detach(), {"x": xg.grad.clone(), **grads}


# ---- the operator wrapper ------------------------------------------------------------------------
def test_grouped_mm_grads_equal_per_expert_loop_uneven_and_empty_groups() -> None:
    torch.manual_seed(1)
    counts = [3, 0, 5, 0, 2, 6]  # zero-size groups in the middle
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    x = torch.randn(sum(counts), 16, requires_grad=True)
    w = torch.randn(6, 16, 24, requires_grad=True)
    g = torch.randn(sum(counts), 24)
    y = grouped_mm(x, w, offs)
    y.backward(g)
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    ref = torch.cat([a @ w2[e] for e, a in enumerate(x2.split(counts)) if counts[e]])
    ref.backward(g)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, atol=1e-6, rtol=1e-6)
    assert torch.all(w.grad[1] == 0) and torch.all(w.grad[3] == 0)  # experts without rows


def test_grouped_mm_sum_backward_runs() -> None:
    """`.sum().backward()` hands over an expanded (stride-0) gradient: made contiguous first."""
    counts = [4, 0, 6]
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    x = torch.randn(10, 16, requires_grad=True)
    w = torch.randn(3, 16, 8, requires_grad=True)
    grouped_mm(x, w, offs).sum().backward()
    expect_x = torch.cat([w[0].sum(1).expand(4, 16), w[2].sum(1).expand(6, 16)]).detach()
    torch.testing.assert_close(x.grad, expect_x)
    torch.testing.assert_close(w.grad[2], x[4:].sum(0).detach().unsqueeze(1).expand(16, 8))


# ---- the layer path ------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_grouped_forward_equals_loop_without_and_with_graph(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    moe = uneven_layer(k)
    calls = spy_grouped(monkeypatch)
    x, valid = inputs(), torch.ones(2, 29, dtype=torch.bool)
    valid[1, 20:] = False
    outs = {}
    for name, opts in (("loop", LOOP), ("grouped", GROUPED)):
        moe.dispatch_options = opts
        with torch.inference_mode():
            outs[name] = moe(x, valid)
        outs[name + "_graph"] = moe(x.clone().requires_grad_(True), valid).detach()
    assert calls == [k * 49, k * 49]  # no-graph and graph: all 49 valid tokens' slots
    assert float(moe.last_stats["load"][7]) == 0.0  # an expert without rows
    for name in ("grouped", "grouped_graph", "loop_graph"):
        torch.testing.assert_close(outs[name], outs["loop"], atol=1e-5, rtol=1e-5)
    assert torch.all(outs["grouped"][1, 20:] == 0)  # padding frames


@pytest.mark.parametrize("sum_loss", [False, True])
def test_grouped_grads_equal_loop(sum_loss: bool) -> None:
    """Input, router and every expert tensor: the loop's gradients within 1e-5, for a random
    incoming gradient and for y.sum() (the expanded gradient that broke the first probe)."""
    moe = uneven_layer(2).train()
    x = inputs()
    grad = None if sum_loss else torch.randn(2, 29, 32)
    y_loop, g_loop = fwd_bwd(moe, LOOP, x, grad)
    y_grp, g_grp = fwd_bwd(moe, GROUPED, x, grad)
    torch.testing.assert_close(y_grp, y_loop, atol=1e-5, rtol=1e-5)
    experts = {f"experts.{t}" for t in ("w_1", "b_1", "w_2", "b_2")}
    assert set(g_grp) == {"x", "router.weight"} | experts
    for name in g_loop:
        torch.testing.assert_close(g_grp[name], g_loop[name], atol=1e-5, rtol=1e-5, msg=name)
    assert torch.all(g_grp["experts.w_1"][7] == 0)  # no rows, zero gradient


def test_grouped_capacity_drops_the_loops_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = uneven_layer(2, capacity_factor=0.5).train()  # cap = ceil(0.5·2·58/8) = 8 per expert
    calls = spy_grouped(monkeypatch)
    x = inputs()
    y_loop, g_loop = fwd_bwd(moe, LOOP, x)
    drop_loop = moe.last_stats["dropped_frac"].item()
    y_grp, g_grp = fwd_bwd(moe, GROUPED, x)
    assert drop_loop > 0 and moe.last_stats["dropped_frac"].item() == drop_loop
    assert calls == [7 * 8]  # experts 0..6 full at their capacity of 8, expert 7 empty
    torch.testing.assert_close(y_grp, y_loop, atol=1e-5, rtol=1e-5)
    for name in g_loop:
        torch.testing.assert_close(g_grp[name], g_loop[name], atol=1e-5, rtol=1e-5, msg=name)
    with torch.no_grad():  # training-mode forward without a graph: the same drops
        moe.dispatch_options = GROUPED
        torch.testing.assert_close(moe(x), y_loop, atol=1e-5, rtol=1e-5)
    assert calls == [56, 56]


def test_grouped_bf16_autocast_close_to_loop() -> None:
    moe = uneven_layer(2).train()
    x = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_loop, g_loop = fwd_bwd(moe, LOOP, x)
        y_grp, g_grp = fwd_bwd(moe, GROUPED, x)
    assert y_grp.dtype == torch.bfloat16
    torch.testing.assert_close(y_grp, y_loop, atol=2e-2, rtol=2e-2)
    for name in ("x", "experts.w_1", "experts.w_2"):
        torch.testing.assert_close(g_grp[name], g_loop[name], atol=5e-2, rtol=5e-2, msg=name)


# ---- where it does not qualify: the loop, no error ----------------------------------------------
def test_unaligned_shape_falls_back_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = uneven_layer(2, d=18, h=48)  # 18 float32 = 72 bytes: not a 16-byte multiple
    calls = spy_grouped(monkeypatch)
    x = inputs(29, 18)
    assert not grouped_mm_qualifies(torch.device("cpu"), torch.float32, 18, 48)
    y_loop, g_loop = fwd_bwd(moe, LOOP, x)
    y_grp, g_grp = fwd_bwd(moe, GROUPED, x)
    y_auto, _ = fwd_bwd(moe, AUTO, x)
    assert calls == []
    assert torch.equal(y_grp, y_loop) and torch.equal(y_auto, y_loop)
    assert all(torch.equal(g_grp[n], g_loop[n]) for n in g_loop)
    assert chosen_paths() == {}  # auto: nothing to measure where only the loop may run


def test_missing_or_failing_operator_falls_back_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moe = uneven_layer(2)
    x = inputs()
    calls = spy_grouped(monkeypatch)
    y_loop, _ = fwd_bwd(moe, LOOP, x)
    monkeypatch.delattr(torch, "_grouped_mm")  # torch before the operator existed
    assert not grouped_mm_qualifies(torch.device("cpu"), torch.float32, 32, 48)
    y_grp, _ = fwd_bwd(moe, GROUPED, x)
    assert calls == [] and torch.equal(y_grp, y_loop)

    def refuses(*args: object, **kw: object) -> torch.Tensor:
        raise NotImplementedError("no CPU kernel for _grouped_mm")  # a build without one

    grouped_ffn.forget_probes()
    monkeypatch.setattr(torch, "_grouped_mm", refuses, raising=False)
    y_grp, _ = fwd_bwd(moe, GROUPED, x)
    assert calls == [] and torch.equal(y_grp, y_loop)
    assert not grouped_ffn.grouped_mm_runs(torch.device("cpu"), torch.float32)


def test_cuda_predicate_native_kernel_only() -> None:
    assert cuda_native_grouped_mm((9, 0), torch.bfloat16, hip=False)  # H100
    assert cuda_native_grouped_mm((10, 0), torch.bfloat16, hip=False)  # B200
    assert not cuda_native_grouped_mm((8, 0), torch.bfloat16, hip=False)  # A100: torch loops
    assert not cuda_native_grouped_mm((12, 0), torch.bfloat16, hip=False)  # not sm90/sm100
    assert not cuda_native_grouped_mm((9, 0), torch.float32, hip=False)
    assert not cuda_native_grouped_mm((9, 0), torch.float16, hip=False)
    assert not cuda_native_grouped_mm((9, 0), torch.bfloat16, hip=True)


def test_cuda_qualification_asks_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch of grouped_mm_qualifies, without a GPU: capability faked, probe faked."""
    cap = {"now": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap["now"])
    monkeypatch.setattr(grouped_ffn, "grouped_mm_runs", lambda device, dtype: True)
    monkeypatch.setattr(torch.version, "hip", None)
    cuda = torch.device("cuda")
    assert not grouped_mm_qualifies(cuda, torch.bfloat16, 144, 576)
    cap["now"] = (9, 0)
    assert grouped_mm_qualifies(cuda, torch.bfloat16, 144, 576)
    assert not grouped_mm_qualifies(cuda, torch.float32, 144, 576)
    assert not grouped_mm_qualifies(cuda, torch.bfloat16, 148, 576)  # 296 bytes: unaligned


# ---- auto ------------------------------------------------------------------------------------------
def test_auto_measures_once_per_key_and_matches_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = uneven_layer(2)
    measured: list[object] = []
    real = moe_dispatch.measure
    monkeypatch.setattr(
        moe_dispatch, "measure", lambda key, *a: measured.append(key) or real(key, *a)
    )
    x = inputs()
    moe.dispatch_options = AUTO
    with torch.inference_mode():
        y_auto = moe(x)
        moe(x + 1.0)  # same key: looked up
        moe(x[:, :10])  # 40 slots -> bucket 64: a new key
    table = chosen_paths()
    assert len(measured) == 2 and set(table) == set(measured)
    key = measured[0]
    shape = (key.experts, key.d_model, key.d_ff, key.dtype, key.device)
    assert shape == (8, 32, 48, "float32", "cpu")
    assert key.slots_bucket == 128 and not key.graph  # 2 x 58 = 116 slots
    assert table[key].path in ("loop", "grouped") and set(table[key].ms) == {"loop", "grouped"}
    assert all(ms > 0 for ms in table[key].ms.values())
    y_graph, _ = fwd_bwd(moe, AUTO, x)
    assert len(measured) == 3 and measured[2].graph
    outs = {"auto": y_auto, "auto_graph": y_graph}
    for path in PATHS:
        if path != "auto":
            moe.dispatch_options = DispatchOptions(path=path)
            with torch.inference_mode():
                outs[path] = moe(x)
    for name, y in outs.items():
        torch.testing.assert_close(y, outs["loop"], atol=1e-5, rtol=1e-5, msg=name)
    clear_chosen_paths()
    assert chosen_paths() == {}


def test_auto_under_autocast_without_grad_times_forward_only() -> None:
    """Autocast takes the graph code, but without grad nothing is differentiated: the key says
    graph False and the measurement runs (no backward attempted)."""
    moe = uneven_layer(2)
    x = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        moe.dispatch_options = LOOP
        y_loop = moe(x)
        moe.dispatch_options = AUTO
        y_auto = moe(x)
    (key,) = chosen_paths()
    assert not key.graph and key.dtype == "bfloat16"
    torch.testing.assert_close(y_auto, y_loop, atol=2e-2, rtol=2e-2)


def test_auto_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = uneven_layer(2)
    x = inputs()
    calls = spy_grouped(monkeypatch)
    key = moe_dispatch.shape_key(moe, x.reshape(-1, 32), graph=False)
    for path, expect in (("grouped", [116]), ("loop", [116])):
        dispatch_tuner.remember(key, Choice(path, {}))
        moe.dispatch_options = AUTO
        with torch.inference_mode():
            moe(x)
        assert calls == expect


def test_auto_timing_leaves_rng_and_grads_alone() -> None:
    """The first (measuring) graph call draws the same dropout masks as a later call, and the
    timed backward passes write no .grad."""
    moe = uneven_layer(2, dropout=0.3).train()
    moe.dispatch_options = AUTO
    x = inputs()
    outs, states = [], []
    for _ in range(2):  # measures, then looks up
        torch.manual_seed(7)
        moe.zero_grad(set_to_none=True)
        outs.append(moe(x.clone().requires_grad_(True)))
        assert all(p.grad is None for p in moe.parameters())
        states.append(torch.get_rng_state())
    assert len(chosen_paths()) == 1
    assert torch.equal(outs[0], outs[1]) and torch.equal(states[0], states[1])


def test_measure_keeps_the_default_on_a_tie(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another candidate must beat the first by more than MARGIN; fake clock, ms per call."""
    key = dispatch_tuner.ShapeKey(8, 32, 48, "float32", "cpu", 64, False)
    clock = {"t": 0.0}
    monkeypatch.setattr(dispatch_tuner.time, "perf_counter", lambda: clock["t"])

    def takes(ms: float):
        def run() -> None:
            clock["t"] += ms / 1e3

        return run

    cpu = torch.device("cpu")
    tie = dispatch_tuner.measure(key, {"loop": takes(10.0), "grouped": takes(9.9)}, cpu)
    assert tie.path == "loop" and tie.ms == pytest.approx({"loop": 10.0, "grouped": 9.9})
    win = dispatch_tuner.measure(key, {"loop": takes(10.0), "grouped": takes(9.0)}, cpu)
    assert win.path == "grouped" and chosen_paths()[key] == win
    with pytest.raises(ValueError, match="at least one candidate"):
        dispatch_tuner.measure(key, {}, cpu)


def test_slots_bucket_is_next_power_of_two() -> None:
    buckets = [dispatch_tuner.slots_bucket(n) for n in (0, 1, 2, 3, 64, 65, 116)]
    assert buckets == [1, 1, 2, 4, 64, 128, 128]


def test_options_accept_grouped_and_auto_and_reject_unknown_paths() -> None:
    assert DispatchOptions(path="grouped").path == "grouped"
    assert DispatchOptions(path="auto").path == "auto"
    with pytest.raises(UmeError, match="grouped_mm.*use one of"):
        DispatchOptions(path="grouped_mm")


def test_measure_rotates_the_order_of_the_candidates() -> None:
    """Each candidate is timed first in some round (a fixed order favours one position)."""
    assert dispatch_tuner.round_order(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert dispatch_tuner.round_order([], 3) == []
    calls: list[str] = []
    key = dispatch_tuner.ShapeKey(8, 32, 48, "float32", "cpu", 32, False)
    fns = {n: (lambda n=n: calls.append(n)) for n in ("loop", "grouped")}
    dispatch_tuner.measure(key, fns, torch.device("cpu"), rounds=4)
    timed = calls[2:]  # after one warm-up call each
    assert [timed[i] for i in range(0, 8, 2)] == ["loop", "grouped", "loop", "grouped"]
