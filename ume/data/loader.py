"""Feature store, length-bucketed batching with a frame budget, and collation.

On 2 CPU cores recomputing fbank every epoch would cost as much as the model, so features are
computed once, as float16. With a cache dir they are written (one utterance at a time, so
memory stays bounded while building) to one packed file keyed by the audio files and feature
config, and read back memory-mapped: a 100-hour corpus (~6 GB of float16 fbank) trains without
being held in memory. Without a cache dir they are kept in memory.

Example:
    >>> store = FeatureStore.build(utts, feat_cfg, cache_dir="data/quick/.cache")
    >>> sampler = BucketSampler(store.lengths, max_frames=6000, max_batch=64, seed=1)
    >>> for idx in sampler.epoch_batches(0):
    ...     feats, feat_lens = store.collate(idx)   # (B, T, 80), (B,)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ume.atomic import atomic_write_json, publish, temp_path
from ume.config import FeatureConfig
from ume.data.features import compute_fbank, spec_augment, speed_perturb
from ume.data.manifest import DataError, Utterance, load_audio, load_manifest

log = logging.getLogger(__name__)


def _cache_key(utts: list[Utterance], cfg: FeatureConfig, speeds: list[float]) -> str:
    h = hashlib.sha1()
    d = asdict(cfg)
    d.pop("spec_augment", None)
    for k in list(d):
        if k.startswith(("num_freq", "max_freq", "num_time", "max_time")):
            d.pop(k)
    h.update(json.dumps([d, speeds], sort_keys=True).encode())
    for u in utts:
        try:
            st = os.stat(u.wav)
            h.update(f"{u.key}\t{u.wav}\t{st.st_size}\t{int(st.st_mtime)}\n".encode())
        except OSError:
            h.update(f"{u.key}\t{u.wav}\tmissing\n".encode())
    return h.hexdigest()[:16]


CACHE_FORMAT = 2  # packed float16 frames + JSON index (1: one safetensors tensor per utt)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _fbank_job(
    job: tuple[Utterance, FeatureConfig, list[float], int],
) -> tuple[Utterance, list[tuple[str, np.ndarray]], str | None]:
    """One utterance's fbank at every speed: (utt, [(key, (T, F) float16)], why skipped)."""
    u, cfg, speeds, min_frames = job
    try:
        wave = load_audio(u.wav)
    except DataError as e:
        return u, [], str(e)
    out = []
    for sp in speeds:
        w = wave if sp == 1.0 else speed_perturb(wave, sp)
        f = compute_fbank(w, cfg)  # (T, F)
        if f.shape[0] < min_frames:
            return u, out, f"only {f.shape[0]} frames (< {min_frames}), too short"
        key = u.key if sp == 1.0 else f"{u.key}-sp{sp}"
        out.append((key, f.astype(np.float16)))
    return u, out, None


def _raw_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".f16")


def _index_path(stem: Path) -> Path:
    # written after the raw file: its presence means the cache is complete
    return stem.with_name(stem.name + ".json")


class PackedFeats:
    """A read-only sequence of (T, F) float16 tensors stored back to back in one raw file,
    memory-mapped (the page cache, not the process, holds what has been read)."""

    def __init__(self, path: Path, offsets: list[int], dim: int) -> None:
        total = offsets[-1]
        self._mm = np.memmap(path, dtype=np.float16, mode="r", shape=(total, dim))
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        a, b = self._offsets[i], self._offsets[i + 1]
        return torch.from_numpy(np.array(self._mm[a:b]))  # (T, F) float16, a private copy

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def length(self, i: int) -> int:
        return self._offsets[i + 1] - self._offsets[i]


class FeatureStore:
    """Features (float16, (T, F) each) for a list of utterances, in memory or memory-mapped
    (:class:`PackedFeats`)."""

    def __init__(
        self, utts: list[Utterance], feats: list[torch.Tensor] | PackedFeats, skipped: list[str]
    ):
        self.utts = utts
        self.feats = feats
        self.skipped = skipped
        if isinstance(feats, PackedFeats):
            self.lengths = [feats.length(i) for i in range(len(feats))]
        else:
            self.lengths = [int(f.shape[0]) for f in feats]

    def __len__(self) -> int:
        return len(self.utts)

    @classmethod
    def from_data_dir(
        cls,
        path: str | os.PathLike,
        cfg: FeatureConfig,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        workers: int = 1,
    ) -> FeatureStore:
        """The store of a data dir (wav.scp + text): unreadable manifest lines and audio are
        skipped, counted and logged, not fatal. `workers` > 1 computes fbank in that many
        processes (same bytes, in the same order).

        Example:
            >>> store = FeatureStore.from_data_dir("data/train", cfg.features, "data/.cache")
        """
        utts, skipped = load_manifest(path)
        for msg in skipped:
            log.warning("data %s: skipped %s", path, msg)
        if skipped:
            log.warning("data %s: %d utterance(s) skipped, %d kept", path, len(skipped), len(utts))
        store = cls.build(utts, cfg, cache_dir, progress=progress, workers=workers)
        store.skipped = skipped + store.skipped
        return store

    @classmethod
    def build(
        cls,
        utts: list[Utterance],
        cfg: FeatureConfig,
        cache_dir: str | os.PathLike | None = None,
        speeds: list[float] | None = None,
        min_frames: int = 1,
        progress: bool = True,
        workers: int = 1,
    ) -> FeatureStore:
        """Compute (or load cached) fbank for every utterance; skip-and-count unreadable ones.

        With speeds (e.g. [0.9, 1.0, 1.1]) each utterance is stored once per speed (offline
        speed perturbation), keys suffixed with `-sp0.9` etc. With workers > 1 the fbank is
        computed in that many processes and gathered in utterance order (the cache is the same
        bytes as with one).
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        speeds = speeds or [1.0]
        cache = None
        if cache_dir is not None:
            cache = Path(cache_dir) / f"feats-{_cache_key(utts, cfg, speeds)}"
            if _index_path(cache).is_file():
                return cls._from_cache(utts, speeds, cache)
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        out_utts: list[Utterance] = []
        feats: list = []  # tensors, or only frame counts when written to the cache file
        skipped: list[str] = []
        raw_tmp = temp_path(_raw_path(cache)) if cache is not None else None
        raw = open(raw_tmp, "wb") if raw_tmp is not None else None  # noqa: SIM115
        try:
            cls._compute(
                utts, cfg, speeds, min_frames, progress, out_utts, feats, skipped, raw, workers
            )
            for msg in skipped:
                log.warning("skipped %s", msg)
            if not out_utts:
                raise DataError(
                    f"no usable utterances: all {len(utts)} were skipped ({skipped[:3]})"
                )
            if raw is not None:
                raw.flush()
                os.fsync(raw.fileno())
        except BaseException:
            if raw is not None:
                raw.close()
                raw_tmp.unlink(missing_ok=True)
            raise
        if raw is None:
            return cls(out_utts, feats, skipped)
        raw.close()
        offsets = [0, *itertools.accumulate(feats)]
        publish(raw_tmp, _raw_path(cache))
        atomic_write_json(
            {
                "format": CACHE_FORMAT,
                "dim": cfg.num_mel_bins,
                "offsets": offsets,
                "keys": [u.key for u in out_utts],
                "skipped": skipped,
            },
            _index_path(cache),
            indent=None,
        )
        return cls._from_cache(utts, speeds, cache)

    @staticmethod
    def _compute(
        utts: list[Utterance],
        cfg: FeatureConfig,
        speeds: list[float],
        min_frames: int,
        progress: bool,
        out_utts: list[Utterance],
        feats: list,
        skipped: list[str],
        raw,
        workers: int = 1,
    ) -> None:
        """fbank of every utterance into `feats` (tensors), or, when `raw` is an open file,
        appended to it as float16 bytes with only the frame counts kept in `feats`."""
        jobs = ((u, cfg, speeds, min_frames) for u in utts)
        pool = None
        if workers > 1 and len(utts) > 1:
            # spawn, not fork: the parent's torch/OpenMP state is not safe to fork
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)
            results = pool.imap(_fbank_job, jobs, chunksize=32)  # in utterance order
        else:
            results = map(_fbank_job, jobs)
        try:
            bar = tqdm(
                results,
                total=len(utts),
                desc="fbank",
                disable=not progress,
                unit="utt",
                mininterval=2,
            )
            for u, out, why in bar:
                if why is not None:
                    skipped.append(f"{u.key}: {why}")
                for key, f in out:  # f: (T, F) float16
                    out_utts.append(Utterance(key, u.wav, u.text, u.lang, u.spk, u.duration))
                    if raw is None:
                        feats.append(torch.from_numpy(f))
                    else:
                        raw.write(np.ascontiguousarray(f).tobytes())
                        feats.append(int(f.shape[0]))
        finally:
            if pool is not None:
                pool.terminate()

    @classmethod
    def _from_cache(cls, utts: list[Utterance], speeds: list[float], path: Path) -> FeatureStore:
        index = json.loads(_index_path(path).read_text(encoding="utf-8"))
        keys = index["keys"]
        by_key = {u.key: u for u in utts}
        out_utts = []
        for k in keys:
            base = k
            for sp in speeds:
                if sp != 1.0 and k.endswith(f"-sp{sp}"):
                    base = k[: -len(f"-sp{sp}")]
            u = by_key[base]
            out_utts.append(Utterance(k, u.wav, u.text, u.lang, u.spk, u.duration))
        feats = PackedFeats(_raw_path(path), index["offsets"], int(index["dim"]))
        return cls(out_utts, feats, index["skipped"])

    def collate(
        self,
        idx: list[int],
        augment: FeatureConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> feats (B, T, F) float32 zero-padded, lengths (B,). SpecAugment if `augment`."""
        seqs = []
        for i in idx:
            f = self.feats[i].float()
            if augment is not None and augment.spec_augment:
                f = spec_augment(f, augment, generator)
            seqs.append(f)
        lens = torch.tensor([s.shape[0] for s in seqs])
        return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True), lens


def collate_tokens(token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ys (B, L) padded with -1, lengths (B,)."""
    lens = torch.tensor([len(t) for t in token_lists])
    ys = torch.full((len(token_lists), max(1, int(lens.max()))), -1, dtype=torch.long)
    for i, t in enumerate(token_lists):
        ys[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ys, lens


class BucketSampler:
    """Batches of similar length under a padded-frame budget (B · T_max ≤ max_frames).

    Deterministic for (seed, epoch): the batch list is fixed, its order shuffled per epoch.
    SortaGrad: `epoch_batches(e, sorted_order=True)` yields shortest batches first.
    """

    def __init__(self, lengths: list[int], max_frames: int, max_batch: int, seed: int) -> None:
        self.lengths = lengths
        self.seed = seed
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        self.batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            t = lengths[i]
            if cur and ((len(cur) + 1) * t > max_frames or len(cur) >= max_batch):
                self.batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            self.batches.append(cur)

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_batches(
        self, epoch: int, sorted_order: bool = False, rank: int = 0, world: int = 1
    ) -> list[list[int]]:
        batches = list(self.batches)
        if not sorted_order:
            random.Random(self.seed * 1000003 + epoch).shuffle(batches)
        # every rank gets the same number of batches (DDP needs equal step counts); with fewer
        # batches than ranks that number is 0 on every rank (the trainer reports it)
        n = len(batches) // world * world
        return batches[rank:n:world]


def numpy_seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def load_batch(
    data: str | Path, features_cfg: FeatureConfig, max_utts: int
) -> tuple[list, list[tuple]]:
    """Up to max_utts utterances of a Kaldi dir / data.list as a list of padded batches
    [(feats (B, T, F), lens (B,), utts)], longest first, ≤ 8 utterances per batch. The
    utterances are spread evenly over the manifest, not its first max_utts: manifests are
    sorted by key, i.e. by voice, so the first 200 of the paper corpus's train set were one
    Mandarin voice and no English (k-means routers and `ume inspect`'s zh/en shares saw that)."""
    from ume.data.manifest import load_manifest

    utts, _ = load_manifest(data, require_text=False)
    if len(utts) > max_utts:
        utts = [utts[i * len(utts) // max_utts] for i in range(max_utts)]
    store = FeatureStore.build(utts, features_cfg, progress=False)
    order = sorted(range(len(store)), key=lambda i: -store.lengths[i])
    batches = []
    for s in range(0, len(order), 8):
        idx = order[s : s + 8]
        feats, lens = store.collate(idx)
        batches.append((feats, lens, [store.utts[i] for i in idx]))
    return store.utts, batches


def random_batch(input_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible padded batch of 4 fake fbank sequences: feats (4, 400, input_dim) with
    zeros past each length, lens (4,) = 400, 317, 256, 180."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([400, 317, 256, 180])
    feats = torch.randn(len(lens), int(lens.max()), input_dim, generator=g) * 3.0 + 8.0
    feats = feats * (torch.arange(feats.size(1)).view(1, -1, 1) < lens.view(-1, 1, 1))
    return feats, lens
