"""Tests for the performance tooling: `ume bench moe`, the export-friendly MoE dispatch and
`ume export`, training throughput, paired RTF with memory (tiny shapes, CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ume.bench.moe import LoopMoE, bench_shape, build_layer
from ume.bench.train_speed import bench_train
from ume.cli import main
from ume.config import ExperimentConfig, ModelConfig, MoEConfig
from ume.decode.export import _feats_list, check_export, export_encoder
from ume.model import moe_dispatch
from ume.model.asr import ASRModel
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions

ROW_KEYS = {"tokens", "d", "h", "e", "k", "pass", "ratio_bound", "ratio_loop", "ratio_hf"}
ROW_KEYS |= {"router", "ratio_wenet", "wenet_ms", "hf_ms"}
ROW_KEYS |= {"grouped_ms", "ratio_grouped", "auto_ms", "ratio_auto", "auto_path"}
ROW_KEYS |= {"device", "gpu", "dtype", "autocast", "ours_tok_s", "tok_s_vs_dense", "tok_s_vs_wenet"}


def tiny_cfg(moe: MoEConfig | None = None) -> ModelConfig:
    cfg = ModelConfig()
    e = cfg.encoder
    e.d_model, e.num_heads, e.d_ff, e.num_blocks, e.subsampling, e.conv_kernel = 32, 2, 64, 2, 4, 3
    d = cfg.decoder
    d.num_blocks, d.r_num_blocks, d.num_heads, d.d_ff = 1, 1, 2, 64
    cfg.moe = moe or MoEConfig()
    return cfg


def tiny_moe_model(e: int = 4, k: int = 2, final_norm: str = "block") -> ASRModel:
    torch.manual_seed(0)
    moe = MoEConfig(num_experts=e, top_k=k, router_init="normal", router_init_std=1.0)
    cfg = tiny_cfg(moe)
    cfg.encoder.final_norm = final_norm
    model = ASRModel(cfg, 50)
    with torch.no_grad():
        model.cmvn_mean.uniform_(-1, 1)
    return model.eval()


# ---- bench moe --------------------------------------------------------------------------------
def test_bench_moe_quick_json_schema(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "moe", "--quick", "--json", "--repeats", "3", "--budget", "0.05"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) == 4  # 2 shapes x fwd, fwd_bwd
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert r["pass"] in ("fwd", "fwd_bwd") and r["h"] == 4 * r["d"]
        assert r["ratio_bound"] > 0 and r["ratio_loop"] > 0
        assert r["ratio_hf"] is None or r["ratio_hf"] > 0  # null without transformers
        # each ratio is the ratio of the row's own timings (not of another measurement)
        assert r["ratio_bound"] == pytest.approx(r["ours_ms"] / r["bound_ms"], rel=0.02, abs=2e-3)
        assert r["ratio_loop"] == pytest.approx(r["ours_ms"] / r["loop_ms"], rel=0.02, abs=2e-3)
        ratio_grouped = r["grouped_ms"] / r["ours_ms"]
        assert r["ratio_grouped"] == pytest.approx(ratio_grouped, rel=0.02, abs=2e-3)
        assert r["auto_ms"] > 0 and r["auto_path"] in ("loop", "grouped")  # measured this run
    assert {(r["e"], r["k"]) for r in rows} == {(4, 1), (8, 2)}


def test_bench_moe_shape_flag(capsys: pytest.CaptureFixture) -> None:
    """--shape TOKENS,D,E,K replaces the grid; a malformed one is refused, naming the format."""
    argv = ["bench", "moe", "--shape", "48,16,8,2", "--json", "--repeats", "3", "--budget", "0.05"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["tokens"], r["d"], r["e"], r["k"], r["pass"]) for r in rows] == [
        (48, 16, 8, 2, "fwd"),
        (48, 16, 8, 2, "fwd_bwd"),
    ]
    for bad, why in (("48,16,8", "four positive integers"), ("48,16,2,3", "top_k 3 > experts 2")):
        with pytest.raises(SystemExit):
            main(["bench", "moe", "--shape", bad])
        assert why in capsys.readouterr().err


def test_interleaved_medians_measure_what_runs() -> None:
    """The timer behind every `bench moe` row: two calls of known, different durations come
    out at their durations (ms) and in their ratio."""
    import time as _time

    from ume.bench.moe import _interleaved_medians

    ms = _interleaved_medians(
        {"short": lambda: _time.sleep(0.005), "long": lambda: _time.sleep(0.02)}, 5, 10.0
    )
    # sleeps only overshoot (more on a busy machine), so: lower bounds tight, upper ones loose
    assert 5.0 <= ms["short"] < 40.0 and 20.0 <= ms["long"] < 80.0, ms
    assert ms["long"] > ms["short"] + 10.0, ms


def test_interleaved_rounds_put_every_fn_in_every_position() -> None:
    """A fixed order would always time the same fn first, right after the previous round's
    last one: the rounds rotate instead, so each fn runs in each position equally often."""
    from ume.bench.moe import _interleaved_medians

    calls: list[str] = []
    names = ["a", "b", "c"]
    _interleaved_medians({n: (lambda n=n: calls.append(n)) for n in names}, 6, 10.0)
    rounds = [calls[i : i + 3] for i in range(3, len(calls), 3)]  # after the warm-up calls
    assert len(rounds) == 6
    for pos in range(3):
        assert sorted(r[pos] for r in rounds) == ["a", "a", "b", "b", "c", "c"], rounds


def test_bench_refuses_a_layer_that_disagrees_with_the_loop_reference(monkeypatch) -> None:
    import ume.bench.moe as bm

    class Wrong(bm.LoopMoE):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1e-2

    monkeypatch.setattr(bm, "LoopMoE", Wrong)
    with pytest.raises(RuntimeError, match="disagree"):
        bm.bench_shape(64, 16, 4, 2, repeats=3, budget_s=0.01)


@pytest.mark.parametrize("router", ["normal", "zeros"])
def test_bench_shape_peers_route_identically(router: str) -> None:
    """WeNet's MoEFFNLayer (via the oracle) and HF's Mixtral block get our router: bench_shape
    checks WeNet's output equals ours and HF picks our experts, else raises."""
    import importlib.util

    from ume.bench.peers import oracle_path

    rows = bench_shape(48, 16, 8, 2, repeats=3, budget_s=0.01, router=router)
    has_hf = importlib.util.find_spec("transformers") is not None
    for r in rows:
        assert r["router"] == router
        assert (r["ratio_wenet"] is not None) == (oracle_path() is not None), r
        assert (r["ratio_hf"] is not None) == has_hf, r
        if r["ratio_wenet"] is not None:
            assert r["ratio_wenet"] == pytest.approx(r["ours_ms"] / r["wenet_ms"], rel=0.02)


def test_bench_shape_tiny_and_loop_reference() -> None:
    rows = bench_shape(64, 16, 4, 2, repeats=3, budget_s=0.01)
    assert [r["pass"] for r in rows] == ["fwd", "fwd_bwd"]
    moe = build_layer(16, 4, 2)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.allclose(moe(x), LoopMoE(moe)(x), atol=1e-5)
    # a realistic router spreads tokens over experts (not all to one)
    moe(torch.randn(1, 256, 16))
    assert int((moe.last_stats["load"] > 0).sum()) == 4


# ---- dispatch paths: fast (no-graph), graph, export-friendly ------------------------------------
@pytest.mark.parametrize(("e", "k"), [(4, 1), (4, 2), (8, 2), (3, 3)])
def test_all_dispatch_paths_agree(e: int, k: int) -> None:
    torch.manual_seed(3)
    cfg = MoEConfig(num_experts=e, top_k=k, router_init="normal", router_init_std=1.0)
    moe = MoEFeedForward(16, 24, "swish", 0.0, cfg).eval()
    x = torch.randn(3, 11, 16)
    valid = torch.ones(3, 11, dtype=torch.bool)
    valid[1, 7:] = False
    valid[2, 3:] = False
    with torch.no_grad():
        ref = moe(x, valid)  # fast path
        ref_load = moe.last_stats["load"].clone()
    with torch.enable_grad():
        graph = moe(x.clone().requires_grad_(True), valid).detach()  # autograd path
    assert torch.allclose(graph, ref, atol=1e-6)
    for path in ("masked", "dense", "bmm", "grouped", "auto"):
        moe.dispatch_options = DispatchOptions(path=path)
        with torch.no_grad():
            out = moe(x, valid)
        assert torch.allclose(out, ref, atol=1e-5), path
        assert torch.all(out[~valid] == 0), path
        assert torch.allclose(moe.last_stats["load"], ref_load), path
    moe.dispatch_options = DispatchOptions()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fast_path_is_bitwise_equal_to_graph_path(k: int) -> None:
    moe = build_layer(32, 8, k).eval()
    # the sorted loop (the padded bmm is only equal within rounding)
    moe.dispatch_options = DispatchOptions(padded_max_rows=0)
    x = torch.randn(2, 150, 32)
    valid = torch.ones(2, 150, dtype=torch.bool)
    valid[1, 100:] = False
    with torch.inference_mode():
        fast = moe(x, valid)
    slow = moe(x.clone().requires_grad_(True), valid).detach()
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("k", [1, 2])
def test_padded_fast_path_for_short_inputs(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-1-sized input with 2 threads: the padded bmm runs and equals the graph path, also
    with uneven load and an expert that gets no token."""
    moe = build_layer(32, 8, k).eval()
    with torch.no_grad():  # token i -> experts i % 7, then (i + 1) % 7; expert 7 gets none
        w = torch.zeros(8, 32)
        for i in range(28):
            w[i % 7, i], w[(i + 1) % 7, i] = 2.0, 1.0
        w[7] = -100.0
        moe.router.weight.copy_(w)
    calls = []
    real = moe_dispatch.dispatch_fast_padded
    monkeypatch.setattr(
        moe_dispatch, "dispatch_fast_padded", lambda *a: calls.append(1) or real(*a)
    )
    x = torch.eye(32)[:28].unsqueeze(0) + 0.01 * torch.rand(1, 28, 32)  # (1, 28, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            fast = moe(x)
            load = moe.last_stats["load"]
            torch.set_num_threads(1)  # one thread: the loop, bitwise equal to the graph path
            loop = moe(x)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 1
    assert float(load[7]) == 0.0
    slow = moe(x.clone().requires_grad_(True)).detach()
    assert torch.allclose(fast, slow, atol=1e-6)
    assert torch.equal(loop, slow)


@pytest.mark.parametrize("tokens", [8, 37, 200])
def test_skewed_load_never_takes_the_padded_path(tokens: int, monkeypatch) -> None:
    """A zero router (every token picks the same k experts): the padded buffer would be sized
    by the busiest expert (E x its rows), so the loop runs at any input length."""
    cfg = MoEConfig(num_experts=8, top_k=2)  # router_init zeros
    moe = MoEFeedForward(32, 64, "swish", 0.0, cfg).eval()
    calls = []
    real = moe_dispatch.dispatch_fast_padded
    monkeypatch.setattr(
        moe_dispatch, "dispatch_fast_padded", lambda *a: calls.append(1) or real(*a)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            moe(torch.randn(1, tokens, 32))
        use = moe_dispatch.use_padded
        assert use(DispatchOptions(), [5, 5, 4, 6, 5, 5, 4, 6], 40)  # even: padded
        assert not use(DispatchOptions(), [20, 20, 0, 0, 0, 0, 0, 0], 40)  # skewed: loop
        assert not use(DispatchOptions(padded_max_rows=0), [5] * 8, 40)
        torch.set_num_threads(1)
        assert not use(DispatchOptions(), [5, 5, 4, 6, 5, 5, 4, 6], 40)  # 1 thread: loop
    finally:
        torch.set_num_threads(threads)
    assert calls == []
    with pytest.raises(ValueError, match="dispatch path"):
        DispatchOptions(path="fast")


# ---- export ------------------------------------------------------------------------------------
@pytest.mark.slow  # four ONNX exports
@pytest.mark.parametrize("moe_path", ["masked", "dense"])
@pytest.mark.parametrize("final_norm", ["block", "encoder"])
def test_export_round_trip(tmp_path: Path, moe_path: str, final_norm: str) -> None:
    pytest.importorskip("onnxruntime")
    model = tiny_moe_model(final_norm=final_norm)
    path = export_encoder(
        model, tmp_path / "enc.onnx", moe_path, example_frames=120, moe_op="portable"
    )
    assert path.stat().st_size > 10_000
    feats = _feats_list(None, None, 3, 80, seed=1)  # three different lengths: dynamic T
    assert len({f.size(1) for f in feats}) == 3
    res = check_export(model, path, feats, threads=1, repeats=1)
    assert res["ok"], res
    assert res["max_abs_diff_encoder"] <= 1e-4 and res["max_abs_diff_ctc"] <= 1e-4
    for key in ("eager_rtf", "onnx_rtf"):  # a tiny model: far below real time, yet measured
        assert 1e-5 < res[key] < 1.0, (key, res[key])
    # eager dispatch is unchanged after export (tracing-only switch)
    assert all(
        m.dispatch_options.path == "loop" and m.dispatch_options.export_path == moe_path
        for m in model.modules()
        if isinstance(m, MoEFeedForward)
    )


# ---- training throughput -----------------------------------------------------------------------
def test_train_throughput_positive() -> None:
    res = bench_train(
        preset="tiny",
        vocab=60,
        batch=2,
        min_frames=80,
        max_frames=120,
        steps=2,
        warmup=1,
        rounds=3,
    )
    assert set(res["runs"]) == {"dense", "ume_frozen", "ume_unfrozen", "ume_unfrozen_ref"}
    for name, per in res["steps_per_s_per_round"].items():  # each reports its median round
        assert len(per) == 3 and res["runs"][name]["steps_per_s"] == sorted(per)[1], name
    assert DispatchOptions().fused_backward  # the default is the fused backward
    with pytest.raises(ValueError, match="--rounds 0"):
        bench_train(preset="tiny", rounds=0)
    for r in res["runs"].values():  # units: steps/s from the timed steps, audio in seconds
        assert r["steps_per_s"] == pytest.approx(r["steps"] / r["seconds"], rel=0.05)
        audio_per_step = r["audio_s_per_s"] / r["steps_per_s"]  # 2 utts of 0.8-1.2 s
        assert 2 * 0.8 * 0.98 <= audio_per_step <= 2 * 1.2 * 1.02, audio_per_step
    frozen, full = res["runs"]["ume_frozen"], res["runs"]["ume_unfrozen"]
    assert 0 < frozen["params_trainable"] < full["params_trainable"] == full["params_total"]


# ---- paired RTF with memory, each model in its own process -------------------------------------
def tiny_pair(tmp_path: Path, top_k: tuple[int, ...] = (2,)) -> Path:
    """tmp_path/dense (tiny dense experiment), tmp_path/ume (its E=4 upcycle; ume_k1 too when
    1 in top_k) and tmp_path/data (two noise utterances). Returns the data dir."""
    from ume.data.tokenizer import Tokenizer
    from ume.expdir import write_experiment
    from ume.upcycle import upcycle_experiment

    tok = Tokenizer.train(["HELLO WORLD", "你好"], bpe_size=40, workdir=tmp_path / "tok")
    cfg = ExperimentConfig()
    cfg.model = tiny_cfg()
    torch.manual_seed(0)
    write_experiment(tmp_path / "dense", cfg, tok, ASRModel(cfg.model, tok.vocab_size))
    for k in top_k:
        out = tmp_path / ("ume" if k == 2 else f"ume_k{k}")
        upcycle_experiment(tmp_path / "dense", out, experts=4, top_k=k, router_init="normal")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, sec in enumerate([0.8, 0.5]):
        p = data / f"u{i}.wav"
        sf.write(p, (rng.standard_normal(int(16000 * sec)) * 3000).astype(np.int16), 16000)
        lines.append(f"u{i} {p}")
    (data / "wav.scp").write_text("\n".join(lines) + "\n")
    return data


def test_bench_rtf_paired_stream_and_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny_pair(tmp_path)
    argv = ["bench", "rtf", "--model", str(tmp_path / "ume"), "--vs", str(tmp_path / "dense")]
    argv += ["--data", str(data), "--threads", "1", "--max-utts", "2", "--json", "--rounds", "2"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    # two alternating rounds: the ratio of the medians lies within the per-round ratios
    assert res["rounds"] == 2 and len(res["ratio_b1_per_round"]) == 2
    lo, hi = min(res["ratio_b1_per_round"]), max(res["ratio_b1_per_round"])
    assert lo - 1e-3 <= res["ratio_b1"] <= hi + 1e-3
    for key in ("rtf_b1", "rtf_b16", "rtf_b1_stream16", "rtf_b16_stream16"):
        # tiny models: far below real time, yet a measured time per audio second (not per
        # sample or per ms), and each ratio is the ratio of the two reported RTFs
        assert 1e-5 < res[key] < 1.0 and 1e-5 < res[f"vs_{key}"] < 1.0, (key, res[key])
        ratio = "ratio_" + key.removeprefix("rtf_")
        assert res[ratio] == pytest.approx(res[key] / res[f"vs_{key}"], rel=0.05), ratio
    assert res["peak_rss_mb"] > 50 and res["vs_peak_rss_mb"] > 50  # torch alone is > 50 MB
    assert res["ratio_params_active"] > 1 and res["rss_delta_mb"] > 0
    # the text report of several rounds: median ratios, then each round's (a list each)
    assert main([*argv[:-3], "--rounds", "2", "--stream-chunk", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ratio: b1 \d+\.\d{3}  b16 \d+\.\d{3}", out, re.M), out
    assert re.search(r"^ratio per round: b1 \d+\.\d{3}/\d+\.\d{3}  b16 ", out, re.M), out


def test_rtf_rounds_take_the_median_of_each_rtf() -> None:
    from ume.bench.rtf import _median_rows

    rows = [
        {"rtf_b1": 1.0, "rtf_b16": 0.5, "peak_rss_mb": 10.0},
        {"rtf_b1": 9.0, "rtf_b16": 0.4, "peak_rss_mb": 20.0},  # a disturbed round
        {"rtf_b1": 2.0, "rtf_b16": 0.6, "peak_rss_mb": 30.0},
    ]
    assert _median_rows(rows) == {"rtf_b1": 2.0, "rtf_b16": 0.5, "peak_rss_mb": 10.0}


def test_rtf_rejects_zero_rounds(tmp_path: Path, capsys) -> None:
    argv = ["bench", "rtf", "--model", str(tmp_path), "--data", str(tmp_path), "--rounds", "0"]
    assert main(argv) == 2
    assert "--rounds 0: need at least 1" in capsys.readouterr().err


def test_bench_gap_splits_the_extra_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ume.bench.gap import share_expert_weights
    from ume.expdir import load_experiment
    from ume.model.params import moe_layers

    data = tiny_pair(tmp_path, top_k=(1, 2))
    flop_ratio = {}
    for name in ("ume_k1", "ume"):
        argv = ["bench", "gap", "--model", str(tmp_path / name), "--vs", str(tmp_path / "dense")]
        argv += ["--data", str(data), "--batch", "1", "--batch", "2", "--rounds", "2", "--json"]
        assert main([*argv, "--padded-max-rows", "0"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["padded_max_rows"] == 0 and DispatchOptions().padded_max_rows == 32
        assert [r["batch"] for r in res["rows"]] == [1, 2] and res["threads"] == 1
        for r in res["rows"]:
            assert r["utts"] == 2 and len(r["ratio_per_round"]) == 2
            parts = 1 + r["extra_flops"] + r["extra_weights"] + r["extra_overhead"]
            assert parts == pytest.approx(r["ratio"], abs=2e-3)
        flop_ratio[name] = res["rows"][0]["flop_ratio"]
    # top-1: the dense FLOPs plus a router; top-2: a second expert per frame on top
    assert 1.0 < flop_ratio["ume_k1"] < 1.05 < flop_ratio["ume"]
    _, _, model = load_experiment(tmp_path / "ume")
    n_moe = len(moe_layers(model))
    assert n_moe >= 2 and share_expert_weights(model) == n_moe
    w = model.encoder.blocks[0].ffn.experts.w_1  # E views of one expert's storage
    assert w.untyped_storage().nbytes() == w[0].numel() * w.element_size()
    dense = str(tmp_path / "dense")
    assert main(["bench", "gap", "--model", dense, "--vs", dense, "--data", str(data)]) == 2
    assert "has no MoE layers" in capsys.readouterr().err
    argv = ["bench", "gap", "--model", str(tmp_path / "ume"), "--vs", dense, "--data", str(data)]
    assert main([*argv, "--rounds", "0"]) == 2
    assert "--rounds 0: need at least 1 round" in capsys.readouterr().err


def test_bench_rtf_onnx_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--onnx: both models also in onnxruntime (full context and streaming: the tiny models
    are causal), ratios model / vs, and one table with eager and onnxruntime rows."""
    data = tiny_pair(tmp_path)
    argv = ["bench", "rtf", "--model", str(tmp_path / "ume"), "--vs", str(tmp_path / "dense")]
    argv += ["--data", str(data), "--threads", "1", "--max-utts", "2", "--rounds", "2"]
    assert main([*argv, "--onnx", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["onnx_stream_chunk"] == 16 and 1e-5 < res["onnx_rtf_stream"] < 1.0
    assert 0 < res["onnx_chunk_ms_p50"] <= res["onnx_chunk_ms_p95"]
    assert res["ratio_onnx_chunk_p95"] == pytest.approx(
        res["onnx_chunk_ms_p95"] / res["vs_onnx_chunk_ms_p95"], rel=0.01
    )
    assert 1e-5 < res["onnx_rtf_full"] < 1.0 and 1e-5 < res["vs_onnx_rtf_full"] < 1.0
    assert res["ratio_onnx_full"] == pytest.approx(
        res["onnx_rtf_full"] / res["vs_onnx_rtf_full"], rel=0.01
    )
    assert len(res["onnx_rtf_full_rounds"]) == 2
    assert main([*argv, "--onnx", "--stream-chunk", "0"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime RTF batch 1, stream" not in out  # --stream-chunk 0: full context only
    assert re.search(r"^eager RTF batch 1 +\d\.\d{4} +\d\.\d{4} +\d+\.\d{3} \(", out, re.M), out
    assert re.search(r"^onnxruntime RTF batch 1 +\d\.\d{4} +\d\.\d{4} +\d+\.\d{3} \(", out, re.M)


def test_side_by_side_table_has_streaming_latency_rows() -> None:
    from ume.bench.rtf import side_by_side

    res = {"stream_chunk": 16, "onnx_stream_chunk": 16, "rtf_b1": 0.02, "vs_rtf_b1": 0.01}
    res["ratio_b1_per_round"] = [1.9, 2.1]
    for n in ("chunk", "delay"):
        for q in ("p50", "p95"):
            res[f"lat_stream16_{n}_ms_{q}"], res[f"vs_lat_stream16_{n}_ms_{q}"] = 30.0, 20.0
    res |= {"onnx_rtf_stream": 0.006, "vs_onnx_rtf_stream": 0.004}
    res |= {"ratio_onnx_stream_range": [1.4, 1.6], "onnx_chunk_ms_p95": 9.0}
    res |= {"vs_onnx_chunk_ms_p95": 3.0}
    table = side_by_side(res, "U", "D")
    assert re.search(r"^eager RTF batch 1 +0\.0200 +0\.0100 +2\.000 \(1\.90-2\.10\)$", table, re.M)
    assert re.search(r"^eager stream16 chunk ms p95 +30\.0000 +20\.0000 +1\.500$", table, re.M)
    assert re.search(r"^onnxruntime RTF batch 1, stream16 .* 1\.500 \(1\.40-1\.60\)$", table, re.M)
    assert re.search(r"^onnxruntime chunk ms p95 +9\.0000 +3\.0000 +3\.000$", table, re.M)
    assert "batch 16, stream16" not in table  # a key the run did not measure: no row


def test_bench_moe_onnx_and_hf_implementations_side_by_side() -> None:
    """--onnx rows carry onnxruntime's portable (and, where supported, fused) layer with a
    ratio; HF's experts implementations each get a column and ratio_hf is to the fastest."""
    import importlib.util

    from ume.decode.onnx_moe import fused_moe_supported

    rows = bench_shape(48, 16, 8, 2, repeats=3, budget_s=0.01, onnx=True)
    fwd, bwd = rows
    assert fwd["ort_portable_ms"] > 0 and fwd["ort_bound_ms"] > 0
    assert ("ort_fused_ms" in fwd) == fused_moe_supported()
    best = min(fwd[k] for k in ("ort_portable_ms", "ort_fused_ms") if k in fwd)
    assert fwd["ratio_ort"] == pytest.approx(fwd["ours_ms"] / best, rel=0.02)
    assert bwd["ratio_ort"] is None  # onnxruntime runs inference only
    if importlib.util.find_spec("transformers") is not None:
        impls = {k for k in fwd if k.startswith("hf_") and k.endswith("_ms") and k != "hf_ms"}
        assert "hf_eager_ms" in impls and fwd["hf_ms"] == min(fwd[k] for k in impls)
        assert fwd["hf_ms"] == fwd[f"hf_{fwd['hf_best']}_ms"]
