"""Chunk-by-chunk encoder with caches == masked full-utterance encoder; streaming decoding and
`ume transcribe --stream` give what `ume decode --chunk-size N` gives."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ume.config import DecoderConfig, EncoderConfig, FeatureConfig, ModelConfig, MoEConfig
from ume.data.features import compute_fbank
from ume.decode.search import MODES, ctc_prefix_beam, decode_batch
from ume.decode.streaming import Endpoint, StreamingDecoder, model_features, stream_latency
from ume.model.asr import ASRModel
from ume.model.moe import MoEFeedForward
from ume.model.streaming import ChunkEncoder, stream_encode

BUNDLED = Path(__file__).resolve().parent.parent / "ume" / "models" / "dense_paper"
MOE = MoEConfig(num_experts=4, top_k=2, router_init="normal", router_init_std=1.0)


def _tiny(moe: MoEConfig, rate: int = 4, final_norm: str = "block", seed: int = 0) -> ASRModel:
    torch.manual_seed(seed)
    enc = EncoderConfig(
        input_dim=80, d_model=16, num_heads=2, d_ff=32, num_blocks=2, subsampling=rate,
        subsampling_channels=4, conv_kernel=5, final_norm=final_norm,
    )  # fmt: skip
    dec = DecoderConfig(num_blocks=1, r_num_blocks=1, num_heads=2, d_ff=32)
    m = ASRModel(ModelConfig(encoder=enc, decoder=dec, moe=moe), 12).eval()
    with torch.no_grad():  # peaky CTC posteriors: hypotheses with several tokens
        m.ctc.weight.mul_(8.0)
    return m


@pytest.mark.parametrize("moe", [MoEConfig(), MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("rate,final_norm", [(4, "block"), (6, "encoder"), (8, "block")])
@pytest.mark.parametrize("chunk,left", [(4, -1), (3, 1), (5, 0)])
def test_chunk_encoder_equals_masked(moe, rate, final_norm, chunk, left) -> None:
    m = _tiny(moe, rate, final_norm)
    g = torch.Generator().manual_seed(rate * 10 + chunk)
    for t in (61, 150, 203):  # last chunk full, short, and one-frame
        feats = torch.randn(1, t, 80, generator=g) * 2 + 5
        with torch.no_grad():
            ref, _ = m.encode(feats, torch.tensor([t]), chunk, left)  # (1, T', D)
        out = stream_encode(m, feats, chunk, left)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-5
        lp_ref, lp = m.ctc_log_probs(ref)[0], m.ctc_log_probs(out)[0]
        assert [h for h, _ in ctc_prefix_beam(lp, 5)] == [h for h, _ in ctc_prefix_beam(lp_ref, 5)]


@pytest.mark.parametrize("moe", [MoEConfig(), MOE], ids=["dense", "moe"])
def test_chunk_encoder_equals_masked_wenet_variants(moe) -> None:
    """WeNet's absolute-position attention, conv context, batch norm and final norms."""
    m = _tiny(moe, 4, "both")
    enc = m.encoder.cfg
    for f in ("pos_enc", "conv_norm", "conv_context"):
        if not hasattr(enc, f):
            pytest.skip(f"encoder config has no {f} (WeNet variants not in this tree)")
    cfg = dataclasses.replace(enc, pos_enc="wenet", conv_norm="batch_norm", conv_context="wenet")
    torch.manual_seed(1)
    m = ASRModel(ModelConfig(encoder=cfg, decoder=m.cfg.decoder, moe=moe), 12).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    feats = torch.randn(1, 150, 80) * 2 + 5
    for chunk, left in ((4, -1), (3, 1)):
        with torch.no_grad():
            ref, _ = m.encode(feats, torch.tensor([150]), chunk, left)
        assert (stream_encode(m, feats, chunk, left) - ref).abs().max().item() <= 1e-5


def test_moe_layers_route_every_chunk_frame() -> None:
    m = _tiny(MOE)
    enc = ChunkEncoder(m, 4)
    att, cnn = enc.init_cache()
    out, att, cnn = enc(torch.randn(1, enc.window, 80), att, cnn, torch.tensor([0]))
    moe = [x for x in m.modules() if isinstance(x, MoEFeedForward)]
    assert len(moe) == 4 and out.shape == (1, 4, 16)
    assert all(float(x.last_stats["load"].sum()) == pytest.approx(1.0) for x in moe)
    assert att.shape == (2, 2, 4, 16) and cnn.shape == (2, 16, 4)


def test_left_chunks_bound_the_cache() -> None:
    enc = ChunkEncoder(_tiny(MoEConfig()), 4, left_chunks=2)
    att, cnn = enc.init_cache()
    for _ in range(5):
        _, att, cnn = enc(torch.randn(1, enc.window, 80), att, cnn, torch.tensor([0]))
    assert att.size(2) == 8  # 2 chunks of 4 frames


def test_non_causal_conv_is_refused() -> None:
    m = _tiny(MoEConfig())
    m.encoder.cfg = dataclasses.replace(m.encoder.cfg, causal_conv=False)
    with pytest.raises(ValueError, match="causal"):
        ChunkEncoder(m, 4)


@pytest.mark.parametrize("moe", [MoEConfig(), MOE], ids=["dense", "moe"])
def test_streaming_decoder_equals_decode(moe) -> None:
    m = _tiny(moe, rate=4)
    cfg = FeatureConfig()
    wave = np.random.default_rng(1).normal(0, 0.2, 16000 * 2).astype(np.float32)
    feats = model_features(compute_fbank(wave, cfg))[None]  # (1, T, F)
    lens = torch.tensor([feats.size(1)])
    for mode in MODES:
        want = decode_batch(m, feats, lens, mode, 5, chunk_size=4)[0]
        sd = StreamingDecoder(m, cfg, 4, mode=mode, beam=5)
        partials = []
        for i in range(0, len(wave), 700):
            partials += sd.accept(wave[i : i + 700])
        assert sd.finish() == want, mode
        assert len(partials) >= 10  # partial results while audio arrives
    with torch.no_grad():
        ref, _ = m.encode(feats, lens, 4)
    assert (sd.encoder_out() - ref).abs().max().item() <= 1e-5


def test_stream_latency_reports_percentiles() -> None:
    m = _tiny(MoEConfig(), rate=4)
    waves = [np.random.default_rng(i).normal(0, 0.2, 8000).astype(np.float32) for i in range(2)]
    res = stream_latency(m, FeatureConfig(), waves, chunk_size=4, mode="ctc_greedy")
    assert res["chunks"] >= 4
    assert 0 < res["chunk_ms_p50"] <= res["chunk_ms_p95"]
    assert 0 < res["delay_ms_p50"] <= res["delay_ms_p95"]
    assert res["final_ms_p50"] > 0 and res["chunk_audio_ms"] == 160


def _state_after(sd: StreamingDecoder, seconds: float, checkpoints: int = 4) -> list[dict]:
    """Feed `seconds` of noise in 0.1 s pieces; the decoder's state at `checkpoints` times."""
    rng = np.random.default_rng(0)
    out, n = [], int(seconds * 10)
    for i in range(n):
        sd.accept(rng.normal(0, 0.2, 1600).astype(np.float32))
        sd.take_finished()
        if (i + 1) % (n // checkpoints) == 0:
            out.append(sd.state_size())
    return out


def test_endpointing_keeps_stream_state_bounded() -> None:
    """Hours of stream must not grow the decoder: with endpoints every state size stays under a
    fixed bound after many chunks; without them (the whole stream one utterance) it grows."""
    m = _tiny(MoEConfig(), rate=4)
    cfg = FeatureConfig()
    ep = Endpoint(silence_after_speech=1.0, silence_alone=5.0, max_utterance=2.0)
    sd = StreamingDecoder(m, cfg, 4, -1, "attention_rescoring", beam=3, endpoint=ep)
    states = _state_after(sd, 60.0)
    assert sd.num_chunks > 300
    # 2 s of utterance at 40 ms frames: 50 encoder frames; fbank: one window of 19 frames
    for st in states:
        assert st["att_cache_frames"] <= 50 + 4 and st["encoder_frames"] <= 50 + 4, st
        assert st["feature_frames"] <= 19 + 160 // 10 + 4, st  # a window plus one piece
        assert st["hyp_tokens"] <= 60 and st["finished_utterances"] == 0, st
    # the same stream without endpoints: caches and kept frames grow with the stream
    sd = StreamingDecoder(m, cfg, 4, -1, "ctc_prefix_beam", beam=3)
    grow = _state_after(sd, 20.0)
    assert grow[-1]["encoder_frames"] >= 3 * grow[0]["encoder_frames"] > 0
    assert grow[-1]["att_cache_frames"] > 400
    assert grow[-1]["feature_frames"] <= 19 + 16 + 4  # fbank frames are freed either way


def test_endpoint_ends_utterances_at_pauses() -> None:
    """Finished utterances come out in order with their times in the stream; finish() returns
    what was not taken; the CLI's --stream is bounded by default."""
    from ume.cli import build_parser

    m = _tiny(MoEConfig(), rate=4)
    with torch.no_grad():
        m.ctc.bias[0] = -100.0  # never blank: every utterance has tokens
    ep = Endpoint(silence_after_speech=0.0, silence_alone=0.0, max_utterance=1.0)
    sd = StreamingDecoder(m, FeatureConfig(), 4, -1, "ctc_greedy", endpoint=ep)
    wave = np.random.default_rng(2).normal(0, 0.2, 16000 * 5).astype(np.float32)
    sd.accept(wave)
    got = sd.take_finished()
    assert len(got) >= 4 and sd.take_finished() == []
    assert [u["start"] for u in got] == sorted(u["start"] for u in got)
    assert all(1.0 <= u["end"] - u["start"] <= 1.0 + 0.16 + 1e-6 for u in got)  # + one chunk
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(got, got[1:]))
    tail = sd.finish()
    assert tail == [t for u in sd.take_finished() for t in u["ids"]]
    args = build_parser().parse_args(["transcribe", "--stream", "--chunk-size", "16", "-"])
    assert args.endpoint_silence > 0 and args.max_utterance > 0


# ---- the bundled model on one synthesised utterance ---------------------------------------
def _upcycled(model: ASRModel) -> ASRModel:
    """The bundled model with perturbed 4-expert MoE FFNs: routing changes the output."""
    moe = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    cfg = MoEConfig(num_experts=4, top_k=2, router_init="normal", router_init_std=0.5)
    for block in moe.encoder.blocks:
        for name in ("ffn_macaron", "ffn"):
            layer = MoEFeedForward.from_dense(getattr(block, name), cfg)
            with torch.no_grad():
                for p in layer.experts.parameters():
                    p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
            setattr(block, name, layer)
    return moe.eval()


@pytest.fixture(scope="module")
def utterance(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt) to synthesise a test utterance")
    path = tmp_path_factory.mktemp("utt") / "hello.wav"
    text = "hello world, this is a test of the speech recognizer"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="no bundled model")
def test_bundled_model_streams_like_masked(utterance: Path) -> None:
    from ume.data.manifest import load_audio
    from ume.expdir import load_experiment

    cfg, _, dense = load_experiment(BUNDLED)
    feats = model_features(compute_fbank(load_audio(str(utterance)), cfg.features))[None]
    lens = torch.tensor([feats.size(1)])
    for model in (dense, _upcycled(dense)):
        with torch.no_grad():
            ref, _ = model.encode(feats, lens, 16)
        out = stream_encode(model, feats, 16)
        assert (out - ref).abs().max().item() <= 1e-5
        lp, lp_ref = model.ctc_log_probs(out)[0], model.ctc_log_probs(ref)[0]
        assert [h for h, _ in ctc_prefix_beam(lp)] == [h for h, _ in ctc_prefix_beam(lp_ref)]


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="no bundled model")
def test_transcribe_stream_equals_decode(utterance: Path, tmp_path: Path, capsys) -> None:
    from ume.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"utt1 {utterance}\n")
    (data / "text").write_text("utt1 HELLO\n")
    hyp = tmp_path / "hyp.txt"
    for mode in ("ctc_prefix_beam", "attention_rescoring"):
        common = ["--model", str(BUNDLED), "--mode", mode, "--chunk-size", "16"]
        assert main(["decode", *common, "--data", str(data), "--out", str(hyp)]) == 0
        want = hyp.read_text().strip().split(maxsplit=1)[1]
        capsys.readouterr()
        assert main(["transcribe", *common, "--stream", str(utterance)]) == 0
        out = capsys.readouterr()
        assert out.out == f"{utterance}\t{want}\n"
        assert len(out.err.strip().splitlines()) >= 2  # partial hypotheses as audio arrives
