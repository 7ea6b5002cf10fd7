"""Issue 13: k-means (content-aware) router initialisation at upcycling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_moe import dense, dense_dir  # noqa: F401 (fixtures)

from ume.upcycle.convert import UpcycleError, upcycle_experiment
from ume.upcycle.router_init import spherical_kmeans


def _clusters(n_per: int, k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k well-separated direction clusters in d dims sharing a large common offset (as layer-
    normed activations do): x (k·n_per, d), label (k·n_per,)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(k, d, generator=g) * 3
    label = torch.arange(k).repeat_interleave(n_per)
    x = dirs[label] + torch.randn(k * n_per, d, generator=g) * 0.3 + 5.0
    return x, label


def test_spherical_kmeans_recovers_clusters() -> None:
    x, label = _clusters(200, 4, 12)
    c = spherical_kmeans(x, 4, torch.Generator().manual_seed(1))
    assert c.shape == (4, 12)
    assert torch.allclose(c.norm(dim=1), torch.ones(4), atol=1e-5)
    assign = (x @ c.t()).argmax(1)
    # every true cluster maps to one k-means cluster, and the map is a bijection
    purity = sum(int(torch.bincount(assign[label == j], minlength=4).max()) for j in range(4))
    assert purity / len(label) > 0.98
    assert len({int(torch.mode(assign[label == j]).values) for j in range(4)}) == 4


def test_spherical_kmeans_uses_every_centroid_and_rejects_too_few_frames() -> None:
    x = torch.randn(9, 5)
    c = spherical_kmeans(x, 8, torch.Generator().manual_seed(0))
    assert len(set((x @ c.t()).argmax(1).tolist())) == 8  # no empty cluster
    with pytest.raises(ValueError, match="3 frames for 4 clusters"):
        spherical_kmeans(torch.randn(3, 5), 4, torch.Generator())


def test_kmeans_upcycle_keeps_function_and_routes_by_content(
    dense_dir,  # noqa: F811
) -> None:
    from ume.data.loader import load_batch
    from ume.expdir import load_experiment
    from ume.model.moe import MoEFeedForward
    from ume.upcycle.verify import VERIFY_TOL, verify_upcycle

    out = dense_dir / "moe_kmeans"
    rep = upcycle_experiment(
        dense_dir / "dense",
        out,
        experts=4,
        top_k=2,
        router_init="kmeans",
        router_data=dense_dir / "data",
        overwrite=True,
    )
    saved = json.loads((out / "upcycle.json").read_text())
    assert saved["router_init"] == "kmeans" and len(saved["kmeans"]) == rep["num_moe_layers"]
    for row in saved["kmeans"]:
        assert row["frames"] > 4 and sum(row["cluster_share"]) == pytest.approx(1.0, abs=1e-3)
    _, tok, dense_model = load_experiment(dense_dir / "dense")
    cfg, _, moe = load_experiment(out)
    assert cfg.model.moe.router_init == "kmeans"
    _, batches = load_batch(dense_dir / "data", cfg.features, 8)
    feats, lens, _ = batches[0]
    res = verify_upcycle(dense_model, moe, feats, lens, tok)
    assert max(res["max_abs_diff_ctc"], res["max_abs_diff_decoder"]) <= VERIFY_TOL
    assert res["identical_decodes"]
    layers = [m for m in moe.modules() if isinstance(m, MoEFeedForward)]
    for m in layers:
        w = m.router.weight.detach()
        # rows are scaled unit centroids: equal norms, all different directions
        norms = w.norm(dim=1)
        assert torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-4)
        cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w, dim=1).t()
        assert float(cos.fill_diagonal_(0).max()) < 0.9999
    # the routing is sharper than a random N(0, 0.02²) router's near-uniform softmax
    with torch.no_grad():
        moe.encode(feats, lens)
    ent = float(layers[0].last_stats["entropy"])
    assert ent < math.log(4) - 0.05


def test_kmeans_needs_data_and_data_needs_kmeans(dense_dir) -> None:  # noqa: F811
    with pytest.raises(UpcycleError, match="needs --router-data"):
        upcycle_experiment(dense_dir / "dense", dense_dir / "km1", 4, 2, router_init="kmeans")
    with pytest.raises(UpcycleError, match="needs --router-data"):
        upcycle_experiment(
            dense_dir / "dense", dense_dir / "km2", 4, 2, router_data=dense_dir / "data"
        )
    with pytest.raises(UpcycleError, match="kmeans on .*nowhere"):
        upcycle_experiment(
            dense_dir / "dense",
            dense_dir / "km3",
            4,
            2,
            router_init="kmeans",
            router_data=dense_dir / "nowhere",
        )


def test_kmeans_cli(dense_dir, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    import argparse

    from ume.upcycle.cli import add_upcycle_args, main_upcycle

    p = argparse.ArgumentParser()
    add_upcycle_args(p)
    out = dense_dir / "km_cli"
    argv = ["--dense", str(dense_dir / "dense"), "--out", str(out), "--experts", "4"]
    argv += ["--router-init", "kmeans", "--router-data", str(dense_dir / "data"), "--verify"]
    assert main_upcycle(p.parse_args(argv + ["--router-utts", "2"])) == 0
    text = capsys.readouterr().out
    assert "router kmeans" in text and "OK: the upcycled model reproduces" in text
    assert json.loads((out / "upcycle.json").read_text())["router_utts"] == 2
    assert main_upcycle(p.parse_args(argv[:-5] + ["--force", "--router-init", "kmeans"])) == 2
    assert "needs --router-data" in capsys.readouterr().err
