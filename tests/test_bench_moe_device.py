"""`ume bench moe --device/--dtype`: rows name where they ran, tokens/s is tokens over the
median time, CUDA timing is synchronised, and impossible requests are refused with a clear
error (tiny shapes, CPU; the last test runs only where CUDA is present)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import ume.bench.moe as bm
import ume.bench.run_on as run_on
from ume.bench.peers import oracle_path
from ume.bench.run_on import RunOn
from ume.cli import main
from ume.device import DeviceError
from ume.model.ffn import FeedForward

FAST = ["--repeats", "3", "--budget", "0.05", "--threads", "1", "--json"]
METHODS = ("ours", "grouped", "auto", "dense", "loop", "wenet", "hf")


def bench_json(capsys: pytest.CaptureFixture, *argv: str) -> list[dict]:
    assert main(["bench", "moe", "--shape", "24,16,4,2", *FAST, *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cpu_rows_name_device_dtype_and_tokens_per_s(capsys: pytest.CaptureFixture) -> None:
    rows = bench_json(capsys, "--device", "cpu")
    assert [r["pass"] for r in rows] == ["fwd", "fwd_bwd"]
    for r in rows:
        assert (r["device"], r["gpu"], r["dtype"], r["autocast"]) == ("cpu", None, "float32", False)
        for m in METHODS:  # tokens / median seconds of the same row's time (ms rounded to 4 dp)
            ms = r["hf_ms" if m == "hf" else f"{m}_ms"]
            if ms is None:
                assert r[f"{m}_tok_s"] is None, (m, r)
            else:
                assert r[f"{m}_tok_s"] == pytest.approx(24 / (ms / 1e3), rel=2e-3), (m, r)
        assert r["tok_s_vs_dense"] == pytest.approx(r["dense_ms"] / r["ours_ms"], rel=5e-3)
        assert (r["wenet_ms"] is not None) == (oracle_path() is not None), r
        if r["wenet_ms"] is not None:
            assert r["tok_s_vs_wenet"] == pytest.approx(r["wenet_ms"] / r["ours_ms"], rel=5e-3)


def test_tokens_per_s_is_tokens_over_median_seconds() -> None:
    assert bm.tokens_per_s(2048, 4.0) == pytest.approx(512_000.0)
    assert bm.tokens_per_s(37, None) is None


def test_bf16_on_cpu_runs_every_layer_under_autocast(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dtype bfloat16: float32 modules, every timed call under torch.autocast(bf16)."""
    seen: list[torch.dtype | None] = []

    class SpyFFN(FeedForward):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            on = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if on else None)
            return super().forward(x)

    monkeypatch.setattr(bm, "FeedForward", SpyFFN)
    rows = bench_json(capsys, "--dtype", "bfloat16")
    for r in rows:
        assert (r["device"], r["dtype"], r["autocast"]) == ("cpu", "bfloat16", True)
        assert r["ours_ms"] > 0 and r["dense_ms"] > 0 and r["ours_tok_s"] > 0
        assert r["auto_path"] in ("loop", "grouped")
    # the dense reference runs only in timed calls: every one of them under bf16 autocast
    assert len(seen) > 6 and set(seen) == {torch.bfloat16}, seen


def test_cuda_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["bench", "moe", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available here" in err and "--device cpu" in err
    with pytest.raises(DeviceError, match="CUDA is not available"):
        RunOn.for_args("cuda", "float32")
    assert RunOn.for_args("auto", "float32").device == torch.device("cpu")


def test_bf16_refused_on_a_gpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_on, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(run_on, "bf16_supported", lambda dev: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Old GPU")
    with pytest.raises(DeviceError, match="Old GPU has no bf16 support; use --dtype float32"):
        RunOn.for_args("cuda", "bfloat16")
    assert RunOn.for_args("cuda", "float32").fields()["gpu"] == "Old GPU"


def test_emulated_cpu_bf16_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(run_on, "bf16_supported", lambda dev: False)
    with caplog.at_level(logging.WARNING, logger="ume.bench.run_on"):
        on = RunOn.for_args("cpu", "bfloat16")
    assert on.dtype == torch.bfloat16 and "emulates it" in caplog.text


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(DeviceError, match="--dtype 'float16': use one of float32, bfloat16"):
        RunOn.for_args("cpu", "float16")


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--onnx", "--dtype", "bfloat16"], "--onnx times onnxruntime on the CPU in float32"),
        (["--profile", "--dtype", "bfloat16"], "--profile and --small-crossover measure the CPU"),
    ],
)
def test_cpu_float32_only_modes_refuse_other_dtypes(
    capsys: pytest.CaptureFixture, argv: list[str], why: str
) -> None:
    assert main(["bench", "moe", "--quick", *argv]) == 2
    assert why in capsys.readouterr().err


def test_every_timed_call_sits_between_two_syncs() -> None:
    """On CUDA a call's time must be its kernels' time: sync right before and right after."""
    events: list[str] = []
    fns = {n: (lambda n=n: events.append(n)) for n in ("a", "b")}
    bm._interleaved_medians(fns, 4, 10.0, sync=lambda: events.append("sync"))
    calls = [i for i, e in enumerate(events) if e != "sync"]
    assert len(calls) == 2 + 2 * 4  # warm-up + 4 rounds
    for i in calls:
        assert events[i - 1] == "sync" and events[i + 1] == "sync", events


def test_run_on_sync_waits_for_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: waited.append(dev))
    RunOn(torch.device("cpu")).sync()
    assert waited == []
    RunOn(torch.device("cuda", 0)).sync()
    assert waited == [torch.device("cuda", 0)]


def test_bf16_check_catches_a_grouped_path_that_drifts() -> None:
    """Under bf16 autocast the grouped and auto paths are compared with ours before timing."""
    moe = bm.build_layer(16, 4, 2).eval()

    class Drift(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return moe(x) + (0.5 if torch.is_autocast_enabled("cpu") else 0.0)

    mods = {"loop": bm.LoopMoE(moe).eval(), "grouped": Drift(), "auto": moe}
    x = torch.randn(1, 24, 16)  # (B, T, D)
    bm._check_same_math(moe, mods, None, x, RunOn(torch.device("cpu")))  # float32: equal
    with pytest.raises(RuntimeError, match="grouped/auto paths differ from ours"):
        bm._check_same_math(moe, mods, None, x, RunOn(torch.device("cpu"), torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_rows_name_the_gpu(capsys: pytest.CaptureFixture, dtype: str) -> None:
    rows = bench_json(capsys, "--device", "cuda", "--dtype", dtype)
    for r in rows:
        assert r["device"].startswith("cuda") and r["gpu"] == torch.cuda.get_device_name(0)
        assert r["dtype"] == dtype and r["ours_tok_s"] > 0


def test_hf_batched_mm_left_out_where_its_weight_copies_are_too_big() -> None:
    """HF's batched_mm copies the expert weights per token-slot: at training-sized inputs that
    is tens of GiB (it would exhaust a GPU), so above the limit it gets no column."""
    from ume.bench.peers import HF_BATCHED_MAX_GATHER_BYTES, hf_batched_gather_bytes, hf_blocks

    assert hf_batched_gather_bytes(bm.build_layer(144, 8, 2), 2048) == 2 * 2048 * 3 * 144 * 384 * 4
    pytest.importorskip("transformers")
    moe = bm.build_layer(16, 4, 2)
    small = hf_blocks(moe, 64)
    if "batched_mm" not in small:
        pytest.skip("this transformers has no batched_mm experts implementation")
    too_many = HF_BATCHED_MAX_GATHER_BYTES // hf_batched_gather_bytes(moe, 1) + 1
    big = hf_blocks(moe, too_many)
    assert "batched_mm" not in big and set(big) == set(small) - {"batched_mm"}
