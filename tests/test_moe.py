"""Tests for ume.model.moe, ume.upcycle and ume.moe_report (tiny models, CPU)."""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ume.config import ExperimentConfig, ModelConfig, MoEConfig
from ume.model.asr import ASRModel
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward
from ume.model.moe_dispatch import DispatchOptions
from ume.model.params import moe_layers, param_report
from ume.moe_report import add_inspect_args, main_inspect
from ume.train.schedule import is_moe_param
from ume.upcycle.cli import add_upcycle_args, main_upcycle
from ume.upcycle.convert import UpcycleError, upcycle_experiment, upcycle_state_dict
from ume.upcycle.verify import verify_upcycle

ALL_SLOTS = ["encoder_macaron", "encoder_ffn", "decoder_ffn"]
VOCAB = 50


def tiny_model_cfg(moe: MoEConfig | None = None) -> ModelConfig:
    cfg = ModelConfig()
    e = cfg.encoder
    e.input_dim, e.d_model, e.num_heads, e.d_ff, e.num_blocks = 80, 32, 2, 64, 2
    e.subsampling, e.conv_kernel = 4, 3
    e.final_norm = "encoder"  # what the presets ship (its after_norm must be copied too)
    d = cfg.decoder
    d.num_blocks, d.r_num_blocks, d.num_heads, d.d_ff = 1, 1, 2, 64
    cfg.moe = moe or MoEConfig()
    return cfg


@pytest.fixture(scope="module")
def dense() -> ASRModel:
    torch.manual_seed(0)
    model = ASRModel(tiny_model_cfg(), VOCAB)
    with torch.no_grad():  # non-trivial CMVN and biases, like a trained model
        model.cmvn_mean.uniform_(-1, 1)
        model.cmvn_istd.uniform_(0.5, 1.5)
        model.decoder.left.out.bias[model.eos] -= 1.0  # attention search emits tokens
    return model.eval()


def padded_batch(
    lens: list[int], dim: int = 80, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(lens)
    feats = torch.randn(len(lens), max(lens), dim, generator=g)
    feats = feats * (torch.arange(max(lens)).view(1, -1, 1) < t.view(-1, 1, 1))
    return feats, t


def upcycled(dense: ASRModel, **moe_kw) -> ASRModel:
    cfg = copy.deepcopy(dense.cfg)
    cfg.moe = MoEConfig(**moe_kw)
    moe = ASRModel(cfg, dense.vocab_size)
    sd, _ = upcycle_state_dict(dense.state_dict(), moe)
    moe.load_state_dict(sd, strict=True)
    return moe.eval()


# ---- function preservation -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("experts", "top_k", "router_init"),
    [
        (2, 1, "zeros"),
        (2, 2, "normal"),
        (4, 1, "normal"),
        (4, 2, "zeros"),
        (8, 1, "zeros"),
        (8, 2, "normal"),
    ],
)
def test_function_preservation(dense: ASRModel, experts: int, top_k: int, router_init: str) -> None:
    moe = upcycled(
        dense,
        num_experts=experts,
        top_k=top_k,
        slots=ALL_SLOTS,
        router_init=router_init,
        router_init_std=1.0,
    )
    n_layers = len(moe_layers(moe))
    assert n_layers == 2 * 2 + 2  # 2 encoder blocks x 2 slots + l2r + r2l decoder FFN
    feats, lens = padded_batch([64, 41, 25])
    # the autoregressive attention search is slow on a shared CPU: run it in one case only
    modes = (
        None
        if experts == 8 and top_k == 2
        else ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring")
    )
    res = verify_upcycle(dense, moe, feats, lens, beam=2, modes=modes)
    assert res["max_abs_diff_ctc"] <= 1e-5
    assert res["max_abs_diff_decoder"] <= 1e-5
    assert res["identical_decodes"], res["decodes_equal"]
    assert len(res["decodes_equal"]) == (4 if modes is None else 3)
    # under bf16 autocast the upcycled model still computes what the dense one does, up to
    # bf16 rounding (the dense model alone moves by ~0.02 between fp32 and bf16 here)
    assert res["bf16_max_abs_diff_ctc"] <= 0.05
    if router_init == "normal" and top_k < experts:  # routing really was non-trivial
        load = moe_layers(moe)["encoder.blocks.0.ffn"].last_stats["load"]
        assert (load > 0).sum() > top_k


def test_from_dense_matches_dense() -> None:
    torch.manual_seed(1)
    ffn = FeedForward(16, 40, activation="relu")
    moe = MoEFeedForward.from_dense(
        ffn, MoEConfig(num_experts=4, top_k=2, router_init="normal", router_init_std=1.0)
    )
    assert isinstance(moe.act, torch.nn.ReLU)
    x = torch.randn(3, 7, 16)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 4:] = False
    out = moe(x, valid)
    assert torch.allclose(out[valid], ffn(x)[valid], atol=1e-6)
    assert torch.all(out[~valid] == 0)  # padding is not routed


# ---- naive reference ------------------------------------------------------------------------
def naive_moe(moe: MoEFeedForward, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    ex = moe.experts
    for b in range(x.size(0)):
        for t in range(x.size(1)):
            if not valid[b, t]:
                continue
            xt = x[b, t]
            probs = torch.softmax(moe.router.weight @ xt, dim=-1)
            w, idx = probs.topk(moe.top_k)
            w = w / w.sum()
            for wi, e in zip(w, idx.tolist()):
                h = moe.act(xt @ ex.w_1[e] + ex.b_1[e])
                out[b, t] += wi * (h @ ex.w_2[e] + ex.b_2[e])
    return out


@pytest.mark.parametrize("dispatch", ["loop", "bmm"])
def test_matches_naive_reference(dispatch: str) -> None:
    torch.manual_seed(2)
    moe = MoEFeedForward(
        16,
        24,
        "swish",
        0.0,
        MoEConfig(num_experts=4, top_k=2, router_init="normal", router_init_std=1.0),
    )
    moe.dispatch_options = DispatchOptions(path=dispatch)
    x = torch.randn(3, 9, 16)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[0, 6:] = False
    valid[2, 2:] = False
    with torch.no_grad():
        ref = naive_moe(moe, x, valid)
        for mode in (moe.eval, moe.train):
            mode()
            assert torch.allclose(moe(x, valid), ref, atol=1e-5)
        assert torch.allclose(moe(x), naive_moe(moe, x, torch.ones_like(valid)), atol=1e-5)


def test_gradients_and_param_names() -> None:
    cfg = MoEConfig(
        num_experts=4, top_k=2, router_init="normal", balance_coef=0.1, z_loss_coef=0.01
    )
    moe = MoEFeedForward(8, 12, "swish", 0.1, cfg).train()
    x = torch.randn(2, 5, 8, requires_grad=True)
    y = moe(x, torch.ones(2, 5, dtype=torch.bool))
    assert set(moe.aux_losses) == {"balance", "z_loss"}
    (y.square().sum() + sum(moe.aux_losses.values())).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert is_moe_param(f"encoder.blocks.0.ffn.{name}"), name
    assert moe.load_sum is not None and float(moe.load_sum.sum()) == 2 * 10
    assert not any("load_sum" in k for k in moe.state_dict())
    y2 = moe(x)  # graph-attached aux losses must not break deepcopy (checkpoint averaging)
    twin = copy.deepcopy(moe)
    assert twin.aux_losses == {} and torch.equal(twin.experts.w_2, moe.experts.w_2)
    del y2
    moe.eval()
    moe(x.detach())
    assert moe.aux_losses == {} and "load" in moe.last_stats
    no_aux = MoEFeedForward(8, 12, moe_cfg=MoEConfig(num_experts=2, balance_coef=0.0)).train()
    no_aux(torch.randn(1, 3, 8))
    assert set(no_aux.aux_losses) == {"z_loss"}


# ---- balancing loss on hand-built router logits -----------------------------------------------
def logit_layer(e: int, k: int, alpha: float = 0.5, **kw) -> MoEFeedForward:
    """MoE layer with D = e whose router is the identity: router logits == input."""
    moe = MoEFeedForward(
        e,
        4,
        "relu",
        0.0,
        MoEConfig(num_experts=e, top_k=k, balance_coef=alpha, z_loss_coef=0.0, **kw),
    )
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(e))
    return moe.train()


def test_balance_uniform_is_minimum() -> None:
    e, alpha, n = 4, 0.5, 32
    moe = logit_layer(e, 1, alpha)
    logits = torch.zeros(1, n, e)
    logits[0, torch.arange(n), torch.arange(n) % e] = 1e-3  # each expert gets N/E tokens
    moe(logits)
    assert torch.allclose(moe.last_stats["load"], torch.full((e,), 1 / e))
    assert moe.aux_losses["balance"].item() == pytest.approx(alpha, abs=1e-4)
    assert moe.last_stats["cv"].item() == pytest.approx(0.0, abs=1e-6)
    assert moe.last_stats["entropy"].item() == pytest.approx(math.log(e), abs=1e-4)
    # all-zero logits: P uniform, so the loss is α whatever the tie-breaking does
    moe(torch.zeros(1, n, e))
    assert moe.aux_losses["balance"].item() == pytest.approx(alpha, abs=1e-6)


def test_balance_collapsed_is_maximum_and_padding_excluded() -> None:
    e, alpha, n = 8, 0.25, 20
    moe = logit_layer(e, 1, alpha)
    logits = torch.zeros(1, n, e)
    logits[..., 3] = 30.0
    moe(logits)
    assert moe.aux_losses["balance"].item() == pytest.approx(alpha * e, rel=1e-5)
    load = moe.last_stats["load"]
    assert load[3] == 1 and load.sum() == 1
    ref = {k: v.clone() for k, v in moe.last_stats.items()}
    ref_bal = moe.aux_losses["balance"].item()
    # add padding frames with extreme logits towards another expert: nothing may change
    pad = torch.zeros(1, 7, e)
    pad[..., 5] = 1e4
    x = torch.cat([logits, pad], dim=1)
    valid = torch.cat([torch.ones(1, n, dtype=torch.bool), torch.zeros(1, 7, dtype=torch.bool)], 1)
    y = moe(x, valid)
    assert moe.aux_losses["balance"].item() == pytest.approx(ref_bal, rel=1e-6)
    for k in ("load", "entropy", "balance", "cv"):
        assert torch.allclose(moe.last_stats[k], ref[k]), k
    assert torch.all(y[0, n:] == 0)


def test_z_loss_value() -> None:
    moe = logit_layer(4, 2, 0.0, capacity_factor=0.0)
    moe.cfg.z_loss_coef = 0.1
    logits = torch.randn(2, 5, 4)
    moe(logits)
    expect = 0.1 * torch.logsumexp(logits, -1).square().mean()
    assert moe.aux_losses["z_loss"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert "balance" not in moe.aux_losses


# ---- capacity factor ------------------------------------------------------------------------
def test_capacity_drops() -> None:
    e, n = 2, 8
    moe = logit_layer(e, 1, 0.0, capacity_factor=1.0)  # capacity = ceil(1·1·8/2) = 4
    logits = torch.zeros(1, n, e)
    logits[0, :6, 0] = 5.0  # tokens 0-5 -> expert 0 (6 > 4: the last two overflow)
    logits[0, 6:, 1] = 5.0  # tokens 6-7 -> expert 1
    x = logits.clone()
    y = moe(x)
    assert moe.last_stats["dropped_frac"].item() == pytest.approx(2 / 8)
    assert torch.all(y[0, 4:6] == 0) and torch.all(y[0, :4].abs().sum(-1) > 0)
    assert torch.all(y[0, 6:].abs().sum(-1) > 0)
    assert moe.last_stats["load"][0].item() == pytest.approx(6 / 8)  # load counts before drops
    moe.eval()  # dropless at inference
    y_eval = moe(x)
    assert moe.last_stats["dropped_frac"].item() == 0 and torch.all(
        y_eval[0, 4:6].abs().sum(-1) > 0
    )

    # k=2: second choices are dropped before first choices
    moe2 = logit_layer(3, 2, 0.0, capacity_factor=1.0)  # capacity = ceil(2·6/3) = 4
    lg = torch.zeros(1, 6, 3)
    lg[0, :, 0] = 2.0  # every token: 2nd choice expert 0 ...
    lg[0, :4, 1] = 3.0  # ... tokens 0-3 pick expert 1 first
    lg[0, 4:, 0] = 4.0  # tokens 4-5 pick expert 0 first, expert 2 second
    lg[0, 4:, 2] = 1.0
    y_train = moe2(lg)
    # expert 0 gets 2 first-choice + 4 second-choice slots -> keeps 2 + 2, drops 2 of 12 slots
    assert moe2.last_stats["dropped_frac"].item() == pytest.approx(2 / 12)
    y_full = moe2.eval()(lg)
    assert torch.allclose(y_train[0, [0, 1, 4, 5]], y_full[0, [0, 1, 4, 5]])  # nothing dropped
    assert not torch.allclose(y_train[0, 2:4], y_full[0, 2:4])  # lost their 2nd choice


def test_max_abs_diff_masks_pairs_and_refuses_shape_mismatch() -> None:
    import ume.upcycle.any_model as any_model
    from ume.upcycle.verify import max_abs_diff

    a = torch.zeros(2, 3, 4)
    b = a.clone()
    b[1, 2] = 5.0  # a padded frame
    b[0, 0, 1] = -0.5
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert max_abs_diff(a, b) == 5.0
    assert max_abs_diff(a, b, valid) == 0.5  # padding does not count
    assert max_abs_diff(a, b, torch.zeros(2, 3, dtype=torch.bool)) == 0.0
    assert max_abs_diff([a, a], [b, a]) == 5.0
    assert max_abs_diff([torch.zeros(0)], [torch.zeros(0)]) == 0.0
    assert max_abs_diff([a], [a, a]) == float("inf")
    assert max_abs_diff(a, torch.zeros(2, 3)) == float("inf")
    assert any_model.max_abs_diff is max_abs_diff and not hasattr(any_model, "_max_diff")


# ---- strict mapping -------------------------------------------------------------------------
def test_strict_errors(dense: ASRModel) -> None:
    cfg = copy.deepcopy(dense.cfg)
    cfg.moe = MoEConfig(num_experts=2, top_k=1)
    moe = ASRModel(cfg, VOCAB)
    sd = dense.state_dict()
    extra = dict(sd)
    extra["encoder.extra_proj.weight"] = torch.zeros(3)
    with pytest.raises(UpcycleError, match=r"encoder\.extra_proj\.weight"):
        upcycle_state_dict(extra, moe)
    missing = dict(sd)
    del missing["ctc.weight"]
    with pytest.raises(UpcycleError, match=r"ctc\.weight"):
        upcycle_state_dict(missing, moe)
    no_bias = dict(sd)
    del no_bias["encoder.blocks.1.ffn.w_1.bias"]
    with pytest.raises(UpcycleError, match=r"encoder\.blocks\.1\.ffn\.experts\.b_1"):
        upcycle_state_dict(no_bias, moe)
    bad_ffn = dict(sd)
    bad_ffn["encoder.blocks.0.ffn.w_3.weight"] = torch.zeros(2)
    with pytest.raises(UpcycleError, match=r"encoder\.blocks\.0\.ffn\.w_3\.weight"):
        upcycle_state_dict(bad_ffn, moe)
    other = ASRModel(tiny_model_cfg(), VOCAB + 1)  # different vocabulary: shape mismatch
    with pytest.raises(UpcycleError, match=r"ctc\.weight"):
        upcycle_state_dict(other.state_dict(), moe)
    _, rep = upcycle_state_dict(sd, moe)
    assert rep["new"] == len(moe_layers(moe)) == 4
    assert rep["copied"] + rep["expanded"] == len(sd) and rep["expanded"] == 4 * 4


def test_drop_upcycling(dense: ASRModel) -> None:
    cfg = copy.deepcopy(dense.cfg)
    cfg.moe = MoEConfig(num_experts=4, top_k=2, slots=["encoder_ffn"])
    moe = ASRModel(cfg, VOCAB)
    sd = dense.state_dict()
    w_dense = sd["encoder.blocks.0.ffn.w_1.weight"].t()  # (D, H)
    same, _ = upcycle_state_dict(sd, moe, drop_ratio=0.0)
    assert all(torch.equal(w, w_dense) for w in same["encoder.blocks.0.ffn.experts.w_1"])
    dropped, rep = upcycle_state_dict(sd, moe, drop_ratio=0.5, seed=3)
    assert rep["drop_ratio"] == 0.5
    w1 = dropped["encoder.blocks.0.ffn.experts.w_1"]  # (E, D, H)
    w2 = dropped["encoder.blocks.0.ffn.experts.w_2"]  # (E, H, D)
    h = w1.shape[2]
    for e in range(4):
        changed = (w1[e] != w_dense).any(0)  # hidden units re-initialised
        assert int(changed.sum()) == h // 2
        assert torch.equal(changed, (w2[e] != sd["encoder.blocks.0.ffn.w_2.weight"].t()).any(1))
        for f in range(e):
            assert not torch.equal(w1[e], w1[f])
    # b_2 and non-FFN tensors untouched; deterministic for a seed
    assert torch.equal(
        dropped["encoder.blocks.0.ffn.experts.b_2"][1], sd["encoder.blocks.0.ffn.w_2.bias"]
    )
    again, _ = upcycle_state_dict(sd, moe, drop_ratio=0.5, seed=3)
    assert torch.equal(again["encoder.blocks.0.ffn.experts.w_1"], w1)
    moe.load_state_dict(dropped, strict=True)


# ---- experiment dirs, CLI entry points, inspect ---------------------------------------------
@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory, dense: ASRModel) -> Path:
    from ume.data.tokenizer import Tokenizer
    from ume.expdir import write_experiment

    root = tmp_path_factory.mktemp("exp")
    texts = ["你好世界", "HELLO WORLD", "今天 GOOD 天气", "THE QUICK BROWN FOX"]
    tok = Tokenizer.train(texts, bpe_size=40, workdir=root / "tokwork")
    cfg = ExperimentConfig()
    cfg.model = tiny_model_cfg()
    torch.manual_seed(0)
    model = ASRModel(cfg.model, tok.vocab_size)
    write_experiment(root / "dense", cfg, tok, model)
    # a tiny Kaldi data dir of noise wavs
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    wav_lines, text_lines = [], []
    for i, (sec, text) in enumerate(zip([1.2, 0.7, 0.5], texts)):
        p = data / f"u{i}.wav"
        sf.write(p, (rng.standard_normal(int(16000 * sec)) * 3000).astype(np.int16), 16000)
        wav_lines.append(f"u{i} {p}")
        text_lines.append(f"u{i} {text}")
    (data / "wav.scp").write_text("\n".join(wav_lines) + "\n")
    (data / "text").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    return root


def test_upcycle_experiment_and_cli(dense_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from ume.expdir import load_experiment

    out = dense_dir / "moe"
    rep = upcycle_experiment(dense_dir / "dense", out, experts=4, top_k=2, slots=ALL_SLOTS)
    assert rep["num_moe_layers"] == 6 and rep["new"] == 6
    assert rep["params_dense"] < rep["params_active"] < rep["params_total"]
    cfg, _, moe = load_experiment(out)  # a normal, complete experiment dir
    assert cfg.model.moe.num_experts == 4 and cfg.model.moe.slots == ALL_SLOTS
    assert (out / "cmvn.json").is_file() and (out / "upcycle.json").is_file()
    assert param_report(moe)["params_total"] == rep["params_total"]
    with pytest.raises(UpcycleError, match="already an MoE"):
        upcycle_experiment(out, dense_dir / "moe2", experts=2, top_k=1)
    with pytest.raises(UpcycleError, match="already exists"):
        upcycle_experiment(dense_dir / "dense", out, experts=2, top_k=1)

    parser = argparse.ArgumentParser()
    add_upcycle_args(parser)
    args = parser.parse_args(
        [
            "--dense",
            str(dense_dir / "dense"),
            "--out",
            str(dense_dir / "moe_cli"),
            "--experts",
            "2",
            "--top-k",
            "1",
            "--slots",
            "encoder_ffn,decoder_ffn",
            "--layers",
            "0",
            "--verify",
            "--verify-data",
            str(dense_dir / "data"),
        ]
    )
    assert main_upcycle(args) == 0
    text = capsys.readouterr().out
    assert "OK: the upcycled model reproduces the dense model" in text
    saved = json.loads((dense_dir / "moe_cli" / "upcycle.json").read_text())
    assert saved["verify"]["identical_decodes"] and saved["num_moe_layers"] == 3
    bad = parser.parse_args(
        [
            "--dense",
            str(dense_dir / "dense"),
            "--out",
            str(dense_dir / "x"),
            "--slots",
            "encoder_fnn",
        ]
    )
    assert main_upcycle(bad) == 2
    assert "encoder_fnn" in capsys.readouterr().err  # errors go to stderr

    iparser = argparse.ArgumentParser()
    add_inspect_args(iparser)
    png = dense_dir / "moe.png"
    iargs = iparser.parse_args([str(out), "--data", str(dense_dir / "data"), "--png", str(png)])
    assert main_inspect(iargs) == 0
    text = capsys.readouterr().out
    assert "enc0.macaron" in text and "l2r0" in text and png.stat().st_size > 1000


def test_inspect_load_and_similarity(dense_dir: Path) -> None:
    from ume.moe_report import inspect_experiment

    out = dense_dir / "moe_drop"
    upcycle_experiment(
        dense_dir / "dense", out, experts=8, top_k=2, slots=ALL_SLOTS, drop_ratio=0.3
    )
    rep = inspect_experiment(out, data=dense_dir / "data")
    assert rep["num_utts"] == 3 and len(rep["layers"]) == 6
    for row in rep["layers"]:
        assert row["sim_mean"] < 1.0 - 1e-3  # drop-upcycling moved the experts apart
        assert sum(row["load"]) == pytest.approx(1.0, abs=1e-4)
        # zero router: every token picks the same k experts -> 6 dead experts, warned about
        assert len(row["dead"]) == 6 and row["cv"] > 1
    assert any("dead expert" in w for w in rep["warnings"])
    upcycle_experiment(dense_dir / "dense", dense_dir / "moe_plain", experts=8, top_k=2)
    plain = inspect_experiment(dense_dir / "moe_plain")  # no data: similarity only
    assert all(
        r["load"] is None and r["sim_mean"] == pytest.approx(1.0, abs=1e-6) for r in plain["layers"]
    )
    dense_rep = inspect_experiment(dense_dir / "dense")
    assert not dense_rep["moe"] and "dense model" in dense_rep["warnings"][0]


def test_inspect_names_per_group_k_and_slots_per_token(dense_dir: Path) -> None:
    from ume.moe_report import format_report, inspect_experiment

    out = dense_dir / "moe_fine"
    upcycle_experiment(dense_dir / "dense", out, experts=8, top_k=1, groups=2)
    rep = inspect_experiment(out)
    row = rep["layers"][0]
    assert (row["experts"], row["groups"]) == (8, 2)
    assert (row["top_k_per_group"], row["slots_per_token"]) == (1, 2)  # k, and k·G
    assert "top_k" not in row  # ambiguous: was k·G under the name of the per-group k
    header, first = format_report(rep).splitlines()[1:3]
    assert header.split()[1:4] == ["E", "G", "k"] and first.split()[1:4] == ["8", "2", "1"]


def test_measure_load_with_an_imported_tokenizer_and_empty_transcripts(dense: ASRModel) -> None:
    """WeNet-imported models carry a UnitsTokenizer (no `UNK` constant, maybe no <unk>): an
    utterance without text whose CTC hypothesis is empty still runs through the decoder."""
    from ume.data.manifest import Utterance
    from ume.data.units_tokenizer import UnitsTokenizer
    from ume.moe_report import measure_load

    moe = upcycled(dense, num_experts=2, top_k=1, slots=["decoder_ffn"])
    with torch.no_grad():
        moe.ctc.bias[0] += 1e4  # every frame decodes to blank: empty hypotheses
    feats, lens = padded_batch([40, 30])
    utts = [Utterance(key=k, wav="", text="", lang="") for k in ("a", "b")]
    units = ["<blank>", *(f"t{i}" for i in range(VOCAB - 2)), "<sos/eos>"]
    for tok in (UnitsTokenizer(units), UnitsTokenizer(["<blank>", "<unk>", *units[2:]])):
        measure_load(moe, tok, [(feats, lens, utts)])
        loads = [m.load_sum for m in moe.modules() if isinstance(m, MoEFeedForward)]
        assert loads and all(x is not None and float(x.sum()) > 0 for x in loads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_asr_training_step(dense: ASRModel, precision: str) -> None:
    moe = upcycled(
        dense,
        num_experts=4,
        top_k=2,
        slots=ALL_SLOTS,
        router_init="normal",
        capacity_factor=1.25,
        jitter=0.01,
    )
    moe.train()
    feats, lens = padded_batch([64, 41])
    ys = torch.tensor([[3, 4, 5], [6, 7, -1]])
    ys_lens = torch.tensor([3, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = moe(feats, lens, ys, ys_lens)
    assert {"balance", "z_loss"} <= set(out) and torch.isfinite(out["loss"])
    # six layers, each balance term >= α (its minimum)
    assert out["balance"].item() >= 6 * moe.cfg.moe.balance_coef * (1 - 1e-4)
    out["loss"].backward()
    routers = [m.router.weight.grad for m in moe_layers(moe).values()]
    assert all(g is not None and torch.isfinite(g).all() for g in routers)
    for m in moe_layers(moe).values():
        s = m.last_stats
        assert s["load"].shape == (4,) and 0 <= s["dropped_frac"].item() < 1
        assert m.router.weight.dtype == torch.float32
