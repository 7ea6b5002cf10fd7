"""Issue 13: symmetry breaking for upcycled experts (router gradient, fine-grained experts,
noise upcycling, router noise, expert learning-rate scale)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_moe import VOCAB, dense_dir, padded_batch, tiny_model_cfg  # noqa: F401 (fixture)

from ume.config import MoEConfig
from ume.model.asr import ASRModel
from ume.model.ffn import FeedForward
from ume.model.moe import MoEFeedForward, expert_tensors_from_dense
from ume.train.schedule import param_groups, set_lr
from ume.upcycle.convert import UpcycleError, upcycle_state_dict


def _dense_ffn(seed: int = 0) -> FeedForward:
    torch.manual_seed(seed)
    ffn = FeedForward(16, 32)
    with torch.no_grad():
        ffn.w_1.bias.uniform_(-0.5, 0.5)
        ffn.w_2.bias.uniform_(-0.5, 0.5)
    return ffn.eval()


def _task_router_grad(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    moe.zero_grad(set_to_none=True)
    y = moe(x)
    y.pow(2).sum().backward()  # a task loss; aux losses are not added
    g = moe.router.weight.grad
    return torch.zeros_like(moe.router.weight) if g is None else g


@pytest.mark.parametrize(("top_k", "groups"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_router_learns_from_task_loss_once_experts_differ(top_k: int, groups: int) -> None:
    cfg = MoEConfig(
        num_experts=8, top_k=top_k, groups=groups, router_init="normal", router_init_std=0.5,
        balance_coef=0.0, z_loss_coef=0.0,
    )  # fmt: skip
    moe = MoEFeedForward.from_dense(_dense_ffn(), cfg).train()
    with torch.no_grad():  # experts differ
        for p in moe.experts.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 12, 16)
    grad = _task_router_grad(moe, x)
    assert moe.aux_losses == {}
    assert grad.abs().sum() > 1e-4, f"router of top_k={top_k} got no task gradient"


def test_top1_gate_is_one_in_value() -> None:
    cfg = MoEConfig(num_experts=4, top_k=1, router_init="normal", router_init_std=1.0)
    moe = MoEFeedForward.from_dense(_dense_ffn(), cfg)
    _, _, gates = moe.route(torch.randn(20, 16))
    assert torch.equal(gates, torch.ones_like(gates))
    assert gates.requires_grad  # the gradient path to the router is kept


@pytest.mark.parametrize(("experts", "groups", "top_k"), [(4, 2, 1), (8, 2, 2), (8, 4, 1)])
def test_fine_grained_experts_preserve_function(experts: int, groups: int, top_k: int) -> None:
    dense = _dense_ffn(1)
    cfg = MoEConfig(
        num_experts=experts, top_k=top_k, groups=groups, router_init="normal", router_init_std=1
    )
    moe = MoEFeedForward.from_dense(dense, cfg).eval()
    assert moe.experts.w_1.shape == (experts, 16, 32 // groups)
    assert moe.top_k == groups * top_k
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        diff = (moe(x) - dense(x)).abs().max().item()
    assert diff <= 1e-5
    # every token uses one expert of each group
    _, top_e, _ = moe.route(x.reshape(-1, 16))
    per = experts // groups
    assert torch.equal(
        (top_e // per).sort(-1).values[:, ::top_k], torch.arange(groups).expand(21, -1)
    )


def test_fine_grained_bad_shapes() -> None:
    with pytest.raises(ValueError, match="groups=3 must be >= 1 and divide"):
        MoEFeedForward(16, 32, moe_cfg=MoEConfig(num_experts=8, groups=3))
    with pytest.raises(ValueError, match="experts per group"):
        MoEFeedForward(16, 32, moe_cfg=MoEConfig(num_experts=4, top_k=3, groups=2))
    w1, b1, w2, b2 = torch.randn(30, 8), torch.randn(30), torch.randn(8, 30), torch.randn(8)
    with pytest.raises(ValueError, match="must divide"):
        expert_tensors_from_dense(w1, b1, w2, b2, 8, 4)


def test_router_noise_only_in_training() -> None:
    cfg = MoEConfig(num_experts=4, top_k=2, router_init="normal", router_noise=1.0)
    moe = MoEFeedForward.from_dense(_dense_ffn(), cfg)
    with torch.no_grad():
        for p in moe.experts.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(40, 16)
    moe.eval()
    _, e1, _ = moe.route(x)
    _, e2, _ = moe.route(x)
    assert torch.equal(e1, e2)
    moe.train()
    _, e3, _ = moe.route(x)
    assert not torch.equal(e1, e3)  # noisy choices in training


@pytest.fixture(scope="module")
def dense() -> ASRModel:
    torch.manual_seed(0)
    return ASRModel(tiny_model_cfg(), VOCAB).eval()


def _moe_model(dense: ASRModel, **kw) -> ASRModel:
    cfg = copy.deepcopy(dense.cfg)
    cfg.moe = MoEConfig(**kw)
    return ASRModel(cfg, dense.vocab_size)


def test_upcycle_state_dict_fine_grained_is_exact(dense: ASRModel) -> None:
    moe = _moe_model(dense, num_experts=8, top_k=1, groups=4, router_init="normal")
    sd, rep = upcycle_state_dict(dense.state_dict(), moe)
    moe.load_state_dict(sd, strict=True)
    moe.eval()
    feats, lens = padded_batch([40, 31])
    with torch.no_grad():
        a, valid = dense.encode(feats, lens)
        b, _ = moe.encode(feats, lens)
    assert (a - b).abs()[valid].max().item() <= 1e-5  # padding frames: MoE outputs 0 there
    assert rep["expanded"] == 4 * len(rep["moe_layers"])


def test_noise_upcycling_perturbs_each_expert_differently(dense: ASRModel) -> None:
    moe = _moe_model(dense, num_experts=4, top_k=2)
    sd0, _ = upcycle_state_dict(dense.state_dict(), moe)
    sd, rep = upcycle_state_dict(dense.state_dict(), moe, seed=3, noise_std=0.1, noise_frac=0.5)
    sd_again, _ = upcycle_state_dict(dense.state_dict(), moe, seed=3, noise_std=0.1, noise_frac=0.5)
    key = next(k for k in sd if k.endswith("experts.w_1"))
    w, w0 = sd[key], sd0[key]
    assert torch.equal(w, sd_again[key])  # seeded
    changed = (w != w0).any(dim=1)  # (E, H): which hidden units moved
    h = w.shape[2]
    assert changed.sum(1).tolist() == [h // 2] * 4  # half of the hidden units of each expert
    assert not torch.equal(changed[0], changed[1])  # a different subset per expert
    rel = (w - w0).std() / w0.std()
    assert 0.01 < rel.item() < 0.2
    assert rep["noise_std"] == 0.1
    with pytest.raises(UpcycleError, match="noise upcycling"):
        upcycle_state_dict(dense.state_dict(), moe, noise_std=0.1, noise_frac=0.0)


def test_upcycle_shape_mismatch_names_the_layer(dense: ASRModel) -> None:
    moe = _moe_model(dense, num_experts=4, top_k=1)
    sd = dense.state_dict()
    key = next(k for k in sd if k.endswith("ffn.w_1.weight"))
    sd = {**sd, key: sd[key][:-2]}
    with pytest.raises(UpcycleError, match="do not pair up"):
        upcycle_state_dict(sd, moe)


def test_phase_moe_lr_scale_groups(dense: ASRModel) -> None:
    moe = _moe_model(dense, num_experts=4, top_k=2)
    groups = param_groups(moe, weight_decay=0.01, moe_lr_scale=5.0)
    by_scale = {g["lr_scale"]: g for g in groups if g["weight_decay"] > 0}
    names = {id(p): n for n, p in moe.named_parameters()}
    moe_names = {names[id(p)] for p in by_scale[5.0]["params"]}
    assert moe_names and all(".experts." in n or ".router." in n for n in moe_names)
    assert not any(".experts." in names[id(p)] for p in by_scale[1.0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(moe.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-3)
    set_lr(opt, 2e-4)
    assert sorted({round(g["lr"], 10) for g in opt.param_groups}) == [2e-4, 1e-3]


def test_inspect_json_reports_specialisation(
    dense_dir,  # noqa: F811 (the fixture imported from test_moe)
    tmp_path,
    capsys: pytest.CaptureFixture,
) -> None:
    import argparse
    import json
    import shutil

    from ume.moe_report import add_inspect_args, main_inspect
    from ume.upcycle.convert import upcycle_experiment

    data = tmp_path / "data"
    shutil.copytree(dense_dir / "data", data)
    (data / "utt2lang").write_text("u0 zh\nu1 en\nu2 mix\n")
    out = tmp_path / "moe"
    upcycle_experiment(
        dense_dir / "dense", out, experts=4, top_k=2, router_init="normal", noise_std=0.2
    )
    p = argparse.ArgumentParser()
    add_inspect_args(p)
    assert main_inspect(p.parse_args([str(out), "--data", str(data), "--json"])) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["layers"]) == 4  # both encoder slots of 2 blocks
    for row in rep["layers"]:
        assert 0.5 < row["sim_mean"] < 1.0 - 1e-4  # noise upcycling moved the experts apart
        assert row["sim_min"] <= row["sim_mean"]
        assert 0 < row["router_entropy"] <= math.log(4) + 1e-6
        assert sum(row["lang_mix"].values()) == pytest.approx(1.0, abs=1e-3)
        assert row["lang_mix"]["zh"] > 0 and row["lang_mix"]["en"] > 0
        assert len(row["lang_share"]) == 4 and 0 <= row["lang_gap"] <= 1


def test_inspect_error_goes_to_stderr(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from ume.moe_report import add_inspect_args, main_inspect

    p = argparse.ArgumentParser()
    add_inspect_args(p)
    assert main_inspect(p.parse_args([str(tmp_path / "missing")])) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "ume inspect: error:" in cap.err  # --json readers get no junk


def test_routing_by_language_counts_frames(dense: ASRModel) -> None:
    from ume.moe_report import RoutingByLanguage

    moe = _moe_model(dense, num_experts=4, top_k=2, router_init="normal").eval()
    feats, lens = padded_batch([40, 24])
    with torch.no_grad(), RoutingByLanguage(moe) as rl:
        rl.langs = ["zh", "en"]
        _, valid = moe.encode(feats, lens)
    name = next(iter(rl.counts))
    c = rl.counts[name]  # (E, 3)
    n_zh, n_en = int(valid[0].sum()), int(valid[1].sum())
    assert c[:, 0].sum().item() == 2 * n_zh and c[:, 1].sum().item() == 2 * n_en
    assert c[:, 2].sum().item() == 0
