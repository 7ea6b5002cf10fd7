"""The feature cache: one packed float16 file, memory-mapped on load (ume.data.loader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ume.config import FeatureConfig
from ume.data import loader
from ume.data.loader import FeatureStore, PackedFeats
from ume.data.manifest import Utterance


def _utts(tmp_path: Path, n: int = 5) -> list[Utterance]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        wav = tmp_path / f"u{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(4000 + 800 * i)).astype(np.float32), 16000)
        out.append(Utterance(f"u{i}", str(wav), "HELLO", "en", "s", 0.25 + 0.05 * i))
    return out


def test_cached_store_is_memory_mapped_and_equal_to_the_in_memory_one(
    tmp_path: Path, monkeypatch
) -> None:
    utts = _utts(tmp_path)
    cfg = FeatureConfig()
    mem = FeatureStore.build(utts, cfg, progress=False)
    mapped = FeatureStore.build(utts, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(mapped.feats, PackedFeats) and not isinstance(mem.feats, PackedFeats)
    assert mapped.lengths == mem.lengths and [u.key for u in mapped.utts] == [
        "u0",
        "u1",
        "u2",
        "u3",
        "u4",
    ]
    for a, b in zip(mem.feats, mapped.feats):
        assert a.dtype == b.dtype == torch.float16 and torch.equal(a, b)
    feats, lens = mapped.collate([4, 0])
    assert feats.shape == (2, mem.lengths[4], cfg.num_mel_bins) and lens.tolist() == [
        mem.lengths[4],
        mem.lengths[0],
    ]

    # a second build reads the cache: no audio is decoded
    def no_audio(path):
        raise AssertionError(f"read {path} although the cache is complete")

    monkeypatch.setattr(loader, "load_audio", no_audio)
    again = FeatureStore.build(utts, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.feats, mem.feats))


def test_an_unfinished_cache_is_rebuilt(tmp_path: Path) -> None:
    utts = _utts(tmp_path, 3)
    cfg = FeatureConfig()
    store = FeatureStore.build(utts, cfg, cache_dir=tmp_path / "cache", progress=False)
    (index,) = (tmp_path / "cache").glob("*.json")
    index.unlink()  # as if the build died before publishing its index
    rebuilt = FeatureStore.build(utts, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert rebuilt.lengths == store.lengths
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_ume_data_fbank_writes_the_cache_that_training_then_reads(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`ume data fbank` precomputes, once, the cache that runs started together then share:
    the trainer's own call (same data dir, features and `<data>/../.cache`) decodes no audio."""
    import json

    from ume.cli import main
    from ume.config import load_config, preset_config

    utts = _utts(tmp_path, 4)
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    (train / "wav.scp").write_text("".join(f"{u.key} {u.wav}\n" for u in utts))
    (train / "text").write_text("".join(f"{u.key} HELLO\n" for u in utts))
    assert main(["data", "fbank", "--preset", "quick", "--no-progress", str(train)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["utts"] == 4 and row["skipped"] == 0
    assert row["cache_dir"] == str(tmp_path / "data" / ".cache")
    assert len(list((tmp_path / "data" / ".cache").glob("feats-*.f16"))) == 1

    def no_audio(path):
        raise AssertionError(f"read {path} although `ume data fbank` cached it")

    monkeypatch.setattr(loader, "load_audio", no_audio)
    feats = load_config(preset_config("quick")).features
    store = FeatureStore.from_data_dir(train, feats, tmp_path / "data" / ".cache", False)
    assert isinstance(store.feats, PackedFeats) and sum(store.lengths) == row["frames"]


def test_fbank_in_two_processes_writes_the_same_cache_bytes_in_the_same_order(
    tmp_path: Path,
) -> None:
    """`ume data fbank --workers 2` (FeatureStore.build(workers=2)): the packed file and index
    are byte-identical to one process's, unreadable audio is still counted and skipped."""
    utts = _utts(tmp_path, 7)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    utts.insert(3, Utterance("bad", str(bad), "HELLO", "en", "s", 0.3))
    cfg = FeatureConfig()
    one = FeatureStore.build(
        utts, cfg, cache_dir=tmp_path / "c1", speeds=[0.9, 1.0], progress=False
    )
    two = FeatureStore.build(
        utts, cfg, cache_dir=tmp_path / "c2", speeds=[0.9, 1.0], progress=False, workers=2
    )
    assert [u.key for u in two.utts] == [u.key for u in one.utts]
    assert len(one.utts) == 14 and len(two.skipped) == 1 and two.skipped[0].startswith("bad:")
    for ext in ("*.f16", "*.json"):
        (a,) = (tmp_path / "c1").glob(ext)
        (b,) = (tmp_path / "c2").glob(ext)
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_fbank_workers_below_one_are_refused(tmp_path: Path, capsys) -> None:
    from ume.cli import main

    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        FeatureStore.build(_utts(tmp_path, 1), FeatureConfig(), progress=False, workers=0)
    with pytest.raises(SystemExit):
        main(["data", "fbank", "--workers", "0", str(tmp_path)])
    assert "--workers: must be >= 1, got 0" in capsys.readouterr().err
