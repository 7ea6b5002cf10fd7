"""Tests for ume.data.features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ume.config import FeatureConfig
from ume.data.features import GlobalCMVN, compute_fbank, spec_augment, speed_perturb
from ume.data.manifest import DataError


def _tone(n: int = 16000) -> np.ndarray:
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_fbank_shape() -> None:
    cfg = FeatureConfig()
    for n in (400, 16000, 12345):
        f = compute_fbank(_tone(n), cfg)
        assert f.shape == ((n - 400) // 160 + 1, 80) and f.dtype == np.float32
    assert np.isfinite(f).all()
    assert compute_fbank(np.zeros(100, np.float32), cfg).shape == (0, 80)
    with pytest.raises(DataError, match="mono"):
        compute_fbank(np.zeros((2, 1000), np.float32), cfg)


def test_cmvn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = [rng.normal(5.0, 3.0, (n, 4)).astype(np.float32) for n in (50, 70, 90)]
    cmvn = GlobalCMVN.from_features(iter(feats))
    assert cmvn.frames == 210
    normed = np.concatenate([cmvn.apply(f) for f in feats])
    assert np.allclose(normed.mean(0), 0, atol=1e-4) and np.allclose(normed.std(0), 1, atol=1e-3)
    cmvn.save(tmp_path / "cmvn.json")
    back = GlobalCMVN.load(tmp_path / "cmvn.json")
    assert np.array_equal(back.mean, cmvn.mean) and np.array_equal(back.istd, cmvn.istd)
    mean, istd = back.as_tensors()
    assert mean.shape == (4,) and istd.dtype == torch.float32
    (tmp_path / "bad.json").write_text('{"mean": [1]}')
    with pytest.raises(DataError, match="malformed"):
        GlobalCMVN.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no frames"):
        GlobalCMVN.from_features([])


def test_spec_augment() -> None:
    cfg = FeatureConfig(num_freq_masks=2, max_freq_width=10, num_time_masks=2, max_time_width=40)
    x = torch.randn(100, 80) + 10.0
    g = torch.Generator().manual_seed(0)
    masked = torch.zeros(100, 80, dtype=torch.bool)
    for _ in range(5):
        y = spec_augment(x, cfg, g)
        assert y.shape == x.shape
        masked |= y == 0
        # every time mask is at most 20% of T
        zero_rows = (y == 0).all(1).nonzero().flatten().tolist()
        assert len(zero_rows) <= 2 * 20
    assert masked.any() and (x != 0).all()  # input untouched
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(spec_augment(x, cfg, g1), spec_augment(x, cfg, g2))
    cfg.spec_augment = False
    assert spec_augment(x, cfg) is x


def test_speed_perturb() -> None:
    w = _tone(16000)
    for f in (0.9, 1.1):
        y = speed_perturb(w, f)
        assert abs(len(y) - 16000 / f) <= 2 and y.dtype == np.float32
    assert speed_perturb(w, 1.0) is w
    with pytest.raises(ValueError, match="positive"):
        speed_perturb(w, 0.0)
