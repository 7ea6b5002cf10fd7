"""`ume export`'s MoE layers as onnxruntime's fused com.microsoft.MoE op: the op's semantics
equal the eager layer's, full-context and streaming graphs equal eager PyTorch, the portable
graph stays available, and exports of non-causal models (no streaming graph) and failed
exports leave no half-written output dir."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ume.cli import main
from ume.config import ExperimentConfig, ModelConfig, MoEConfig
from ume.decode.export import _feats_list, check_export, export_encoder, ort_session
from ume.decode.onnx_moe import FusedMoEExport, fused_moe_layers, fused_moe_supported
from ume.decode.onnx_trace import trace_to_onnx
from ume.model.asr import ASRModel
from ume.model.moe import MoEFeedForward
from ume.model.streaming import stream_encode

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
needs_fused = pytest.mark.skipif(
    not fused_moe_supported(), reason="installed onnxruntime has no CPU com.microsoft.MoE"
)


def tiny_cfg(moe: MoEConfig | None = None, causal: bool = True) -> ModelConfig:
    cfg = ModelConfig()
    e = cfg.encoder
    e.d_model, e.num_heads, e.d_ff, e.num_blocks, e.subsampling, e.conv_kernel = 32, 2, 64, 2, 4, 3
    e.causal_conv = causal
    d = cfg.decoder
    d.num_blocks, d.r_num_blocks, d.num_heads, d.d_ff = 1, 1, 2, 64
    cfg.moe = moe or MoEConfig()
    return cfg


def tiny_moe_model(e: int = 4, k: int = 2, groups: int = 1) -> ASRModel:
    torch.manual_seed(0)
    moe = MoEConfig(
        num_experts=e, top_k=k, groups=groups, router_init="normal", router_init_std=1.0
    )
    model = ASRModel(tiny_cfg(moe), 50)
    with torch.no_grad():
        model.cmvn_mean.uniform_(-1, 1)
        for m in model.modules():  # distinct experts: a wrong routing shows in the outputs
            if isinstance(m, MoEFeedForward):
                for t in (m.experts.b_1, m.experts.b_2):
                    t.normal_(0, 0.5)
    return model.eval()


def op_counts(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


class _LayerWrap(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@needs_fused
@pytest.mark.parametrize(("k", "act"), [(1, "swish"), (2, "swish"), (2, "relu"), (3, "swish")])
def test_fused_op_equals_the_eager_layer(tmp_path: Path, k: int, act: str) -> None:
    """One MoE layer -> one com.microsoft.MoE node; onnxruntime's output equals the eager
    layer's (softmax over all experts, top-k, gates renormalised, biases, the activation)."""
    torch.manual_seed(k)
    layer = MoEFeedForward(16, 48, act, 0.0, MoEConfig(num_experts=6, top_k=k)).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)
        for t in (layer.experts.w_1, layer.experts.w_2, layer.experts.b_1, layer.experts.b_2):
            t.normal_(0, 0.3)
    x = torch.randn(1, 57, 16)
    with torch.no_grad():
        want = layer(x)
    path = tmp_path / "moe.onnx"
    wrap = _LayerWrap(layer).eval()
    with fused_moe_layers(wrap) as n:
        assert n == 1 and isinstance(wrap.layer, FusedMoEExport)
        trace_to_onnx(wrap, (x,), path, ["x"], ["y"], {"x": {1: "T"}, "y": {1: "T"}})
    assert wrap.layer is layer  # restored
    ops = op_counts(path)
    assert ops["MoE"] == 1 and ops["NonZero"] == 0, ops
    sess = ort_session(path, 1)
    for t in (57, 9):  # the traced length and another one: the time axis is dynamic
        xt = x[:, :t]
        with torch.no_grad():
            want = layer(xt).numpy()
        got = sess.run(None, {"x": xt.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@needs_fused
def test_fused_full_and_streaming_graphs_equal_eager(tmp_path: Path) -> None:
    from ume.decode.deploy import export_streaming
    from ume.decode.export import moe_export_mode

    model = tiny_moe_model()
    n_moe = sum(isinstance(m, MoEFeedForward) for m in model.modules())
    full = export_encoder(model, tmp_path / "enc.onnx", example_frames=120, moe_op="fused")
    ops = op_counts(full)
    assert ops["MoE"] == n_moe == 4 and ops["NonZero"] == 0, ops
    feats = _feats_list(None, None, 3, 80, seed=1)
    res = check_export(model, full, feats, threads=1, repeats=1)
    assert res["ok"], res
    assert res["max_abs_diff_encoder"] <= 1e-4
    # the portable graph is kept: standard ops only, same outputs
    port = export_encoder(model, tmp_path / "port.onnx", example_frames=120)  # default
    ops = op_counts(port)
    assert ops["MoE"] == 0 and ops["NonZero"] == 4 * n_moe, ops
    assert check_export(model, port, feats, threads=1, repeats=1)["ok"]
    # streaming graph, chunk 4: chunk by chunk with caches equals the eager chunk encoder
    with moe_export_mode(model, "fused"):
        sp = export_streaming(model, tmp_path / "enc_stream.onnx", chunk_size=4)
    assert op_counts(sp)["MoE"] == n_moe
    from ume.model.streaming import ChunkEncoder

    enc = ChunkEncoder(model, 4)
    sess = ort_session(sp, 1)
    names = {i.name for i in sess.get_inputs()}
    for f in feats:
        att, cnn = (t.numpy() for t in enc.init_cache())
        outs, done = [], 0
        for s, e in enc.windows(f.size(1)):
            feed = {"feats": f[:, s:e].numpy(), "att_cache": att, "cnn_cache": cnn,
                    "offset": np.array([done], np.int64)}  # fmt: skip
            out, _, att, cnn = sess.run(None, {k: v for k, v in feed.items() if k in names})
            outs.append(out)
            done += out.shape[1]
        want = stream_encode(model, f, 4).numpy()
        np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=1e-4, rtol=0)


def test_moe_op_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default portable; fused where it is exact and supported; an explicit fused that cannot
    be honoured is an error naming the reason and the way out."""
    import ume.decode.export as ex

    grouped = tiny_moe_model(e=4, k=1, groups=2)
    assert ex.resolve_moe_op(grouped) == "portable"
    if fused_moe_supported():
        assert ex.resolve_moe_op(tiny_moe_model(), "fused") == "fused"
    with pytest.raises(ValueError, match="groups=2.*--moe-op portable"):
        ex.resolve_moe_op(grouped, "fused")
    with pytest.raises(ValueError, match="groups=2"):
        with fused_moe_layers(grouped):
            pass
    dense = ASRModel(tiny_cfg(), 50)
    assert ex.resolve_moe_op(dense, "fused") == "portable"  # nothing to fuse
    plain = tiny_moe_model()
    assert ex.resolve_moe_op(plain) == "portable"
    monkeypatch.setattr(ex, "fused_moe_supported", lambda: False)
    with pytest.raises(ValueError, match="onnxruntime >= 1.20"):
        ex.resolve_moe_op(plain, "fused")
    assert ex.resolve_moe_op(plain, "portable") == "portable"
    with pytest.raises(ValueError, match="--moe-op 'x'"):
        ex.resolve_moe_op(plain, "x")


# ---- non-causal models, staged output ------------------------------------------------------
def _write_exp(root: Path, causal: bool) -> Path:
    from ume.data.tokenizer import Tokenizer
    from ume.expdir import write_experiment

    tok = Tokenizer.train(["HELLO WORLD", "你好"], bpe_size=40, workdir=root / "tok")
    cfg = ExperimentConfig()
    cfg.model = tiny_cfg(causal=causal)
    torch.manual_seed(0)
    exp = root / ("causal" if causal else "noncausal")
    write_experiment(exp, cfg, tok, ASRModel(cfg.model, tok.vocab_size))
    return exp


def test_export_non_causal_model_writes_full_context_only(tmp_path: Path, capsys) -> None:
    exp = _write_exp(tmp_path, causal=False)
    out = tmp_path / "deploy" / "encoder.onnx"
    assert main(["export", "--model", str(exp), "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["streaming"] is None and "causal_conv: true" in res["streaming_not_written"]
    files = {p.name for p in out.parent.iterdir()}
    assert {"encoder.onnx", "runtime.json", "tokens.json", "features.json"} <= files
    assert "encoder_stream.onnx" not in files and not any(f.startswith(".") for f in files)
    assert "stream" not in json.loads((out.parent / "runtime.json").read_text())["files"]
    # asking for a streaming graph explicitly: one clear error, nothing written
    out2 = tmp_path / "deploy2" / "encoder.onnx"
    assert main(["export", "--model", str(exp), "--out", str(out2), "--stream-chunk", "8"]) != 0
    err = capsys.readouterr().err
    assert "not causal" in err and "causal_conv: true" in err, err
    assert not out2.parent.exists()


def test_failed_export_leaves_no_half_written_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    import ume.decode.deploy as deploy

    exp = _write_exp(tmp_path, causal=True)

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise ValueError("streaming export failed")

    monkeypatch.setattr(deploy, "write_runtime_files", boom)
    new = tmp_path / "new" / "encoder.onnx"
    assert main(["export", "--model", str(exp), "--out", str(new)]) != 0
    assert not new.parent.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(exp), "--out", str(old / "encoder.onnx")]) != 0
    assert sorted(p.name for p in old.iterdir()) == ["keep.txt"]  # no graph, no staging dir
    monkeypatch.undo()
    assert main(["export", "--model", str(exp), "--out", str(old / "encoder.onnx")]) == 0
    names = sorted(p.name for p in old.iterdir())
    assert {"keep.txt", "encoder.onnx", "encoder_stream.onnx", "runtime.json"} <= set(names)
    assert not any(n.startswith(".") for n in names), names


# ---- int8 --------------------------------------------------------------------------------
@needs_fused
def test_qmoe_rewrite_equals_dequantised_experts(tmp_path: Path) -> None:
    """MoE -> 8-bit QMoE: onnxruntime's output equals the eager layer run with the
    dequantised expert weights ((q - 128) * scale), so the layout, scales and zero point are
    the operator's; and it stays close to the float layer."""
    from ume.decode.quantize import moe_to_qmoe, quantize_rows_int8

    torch.manual_seed(0)
    layer = MoEFeedForward(16, 48, "swish", 0.0, MoEConfig(num_experts=4, top_k=2)).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)
        for t in (layer.experts.b_1, layer.experts.b_2):
            t.normal_(0, 0.3)
    x = torch.randn(1, 33, 16)
    wrap = _LayerWrap(layer).eval()
    path = tmp_path / "moe.onnx"
    with fused_moe_layers(wrap):
        trace_to_onnx(wrap, (x,), path, ["x"], ["y"], {"x": {1: "T"}})
    model = onnx.load(str(path))
    assert moe_to_qmoe(model) == 1
    assert [n.op_type for n in model.graph.node].count("QMoE") == 1
    qpath = tmp_path / "qmoe.onnx"
    onnx.save(model, str(qpath))
    got = ort_session(qpath, 1).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want_float = layer(x).numpy()
        for name in ("w_1", "w_2"):  # (E, in, out) -> rows are outputs: quantise w^T
            w = getattr(layer.experts, name)
            q, s = quantize_rows_int8(w.transpose(1, 2).numpy())
            deq = (q.astype(np.float32) - 128) * s[..., None]
            w.copy_(torch.from_numpy(deq).transpose(1, 2))
        want = layer(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got - want_float).max() < 0.02 * np.abs(want_float).max()


@needs_fused
def test_export_int8_cli(tmp_path: Path, capsys) -> None:
    """`ume export --int8`: QMoE for fused MoE layers, int8 MatMuls for the rest, streaming
    graph too; the CTC argmax mostly agrees with eager (values change by design)."""
    from ume.upcycle import upcycle_experiment

    dense = _write_exp(tmp_path, causal=True)
    ume_dir = tmp_path / "ume"
    upcycle_experiment(dense, ume_dir, experts=4, top_k=2, router_init="normal")
    out = tmp_path / "int8" / "encoder.onnx"
    argv = ["export", "--model", str(ume_dir), "--out", str(out), "--moe-op", "fused",
            "--int8", "--check", "--utts", "2"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["int8"]["encoder.onnx"]["qmoe_nodes"] == 4
    assert res["int8"]["encoder_stream.onnx"]["qmoe_nodes"] == 4
    assert res["int8"]["encoder.onnx"]["int8_matmuls"] > 0
    ops = op_counts(out)
    assert ops["MoE"] == 0 and ops["QMoE"] == 4, ops
    assert res["max_abs_diff_encoder"] < 0.5  # int8 rounding, not a broken graph


@needs_fused
@pytest.mark.slow  # two exports + four example subprocesses
def test_onnx_example_runs_fused_and_portable_exports(tmp_path: Path, capsys) -> None:
    """examples/onnx_transcribe.py (onnxruntime only) gives `ume transcribe --mode ctc_greedy`'s
    text from both MoE graph kinds, full context and streaming."""
    import os
    import subprocess
    import sys

    import soundfile as sf

    from ume.upcycle import upcycle_experiment

    dense = _write_exp(tmp_path, causal=True)
    ume_dir = tmp_path / "ume"
    upcycle_experiment(dense, ume_dir, experts=4, top_k=2, router_init="normal")
    wav = tmp_path / "a.wav"
    rng = np.random.default_rng(0)
    sf.write(wav, (rng.standard_normal(16000) * 3000).astype(np.int16), 16000)
    example = Path(__file__).resolve().parents[1] / "examples" / "onnx_transcribe.py"
    env = {**os.environ, "PYTHONPATH": ""}
    for stream in ([], ["--stream"]):
        cmd = ["transcribe", "--model", str(ume_dir), "--mode", "ctc_greedy", str(wav)]
        assert main(cmd + (["--stream", "--chunk-size", "16"] if stream else [])) == 0
        want = capsys.readouterr().out
        for op in ("fused", "portable"):
            out = tmp_path / op / "encoder.onnx"
            if not out.exists():
                argv = ["export", "--model", str(ume_dir), "--out", str(out), "--moe-op", op]
                assert main(argv) == 0
                capsys.readouterr()
            got = subprocess.run(
                [sys.executable, "-I", str(example), str(out), str(wav)] + stream,
                capture_output=True, text=True, check=True, cwd=tmp_path, env=env,
            ).stdout  # fmt: skip
            assert got == want, (op, stream)
        assert len(want.split("\t", 1)[1].strip()) > 0, want  # some text, not two empties
