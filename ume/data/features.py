"""Acoustic features: Kaldi-compatible log-mel fbank, global CMVN, SpecAugment, speed perturbation.

Example:
    >>> cfg = FeatureConfig()
    >>> feats = compute_fbank(load_audio("a.wav"), cfg)   # (T, 80)
    >>> cmvn = GlobalCMVN.from_features([feats])
    >>> cmvn.save("exp/cmvn.json")
    >>> mean, istd = GlobalCMVN.load("exp/cmvn.json").as_tensors()  # (80,), (80,)
    >>> aug = spec_augment(torch.from_numpy(feats), cfg)  # (T, 80)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import torch

from ume.atomic import atomic_write_text
from ume.config import FeatureConfig
from ume.data.augment import speed_perturb  # noqa: F401  (re-exported: one implementation)
from ume.data.manifest import DataError


def compute_fbank(wave: np.ndarray, cfg: FeatureConfig, sample_rate: int = 16000) -> np.ndarray:
    """Log-mel filterbank of a mono float wave in [-1, 1]: returns (T, num_mel_bins) float32.

    The wave is scaled by 32768 (int16 range) as Kaldi does; frames use snip_edges, so
    T = (N - frame_length) // frame_shift + 1; a wave shorter than one frame gives (0, F), which
    the caller should count and skip.

    Example:
        >>> compute_fbank(np.zeros(16000, np.float32), FeatureConfig()).shape
        (98, 80)
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise DataError(f"compute_fbank expects a mono wave of shape (N,), got {wave.shape}")
    frame_len = int(round(sample_rate * cfg.frame_length_ms / 1000))
    if wave.shape[0] < frame_len:  # shorter than one frame: no frames (caller skips it)
        return np.zeros((0, int(cfg.num_mel_bins)), dtype=np.float32)
    fb = knf.OnlineFbank(fbank_options(cfg, sample_rate))
    fb.accept_waveform(float(sample_rate), (wave.astype(np.float32) * 32768.0).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    feats = np.stack([np.asarray(fb.get_frame(i), dtype=np.float32) for i in range(n)])  # (T, F)
    return feats


def fbank_options(cfg: FeatureConfig, sample_rate: int = 16000) -> knf.FbankOptions:
    """kaldi-native-fbank options for a feature config (snip_edges, as compute_fbank uses)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(sample_rate)
    opts.frame_opts.frame_shift_ms = float(cfg.frame_shift_ms)
    opts.frame_opts.frame_length_ms = float(cfg.frame_length_ms)
    opts.frame_opts.dither = float(cfg.dither)
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = int(cfg.num_mel_bins)
    return opts


class OnlineFeatures:
    """Fbank of audio that arrives in pieces: the frames compute_fbank gives for the whole wave.

    Example:
        >>> fe = OnlineFeatures(FeatureConfig())
        >>> fe.accept(wave[:1600]); fe.accept(wave[1600:]); fe.finish()
        >>> fe.frames(0, fe.num_frames).shape   # == compute_fbank(wave, cfg).shape
        (98, 80)
    """

    def __init__(self, cfg: FeatureConfig, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self._fb = knf.OnlineFbank(fbank_options(cfg, sample_rate))
        self._rows: list[np.ndarray] = []  # frames first .. first + len(rows)
        self._first = 0

    def accept(self, wave: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] (N,)."""
        self._fb.accept_waveform(
            float(self.sample_rate), (np.asarray(wave, np.float32) * 32768.0).tolist()
        )
        self._collect()

    def finish(self) -> None:
        """No more audio: the last frames become ready."""
        self._fb.input_finished()
        self._collect()

    def _collect(self) -> None:
        for i in range(self.num_frames, self._fb.num_frames_ready):
            self._rows.append(np.asarray(self._fb.get_frame(i), dtype=np.float32))

    @property
    def num_frames(self) -> int:
        """Frames computed so far (including discarded ones): the next frame's index."""
        return self._first + len(self._rows)

    @property
    def num_kept(self) -> int:
        """Frames held in memory (not discarded)."""
        return len(self._rows)

    def discard(self, before: int) -> None:
        """Free the frames with index < before; later indices stay as they were."""
        n = min(max(0, before - self._first), len(self._rows))
        if n:
            del self._rows[:n]
            self._fb.pop(n)
            self._first += n

    def frames(self, start: int, end: int) -> np.ndarray:
        """Ready frames [start, end) as (T, F) float32 (start >= the first kept frame)."""
        if start < self._first:
            raise IndexError(f"frame {start} was discarded (first kept: {self._first})")
        rows = self._rows[start - self._first : end - self._first]
        if not rows:
            return np.zeros((0, self._fb.dim), dtype=np.float32)
        return np.stack(rows)


@dataclass
class GlobalCMVN:
    """Global mean / inverse standard deviation per feature dim, estimated on training features.

    Example:
        >>> cmvn = GlobalCMVN.from_features(f for f in train_feats)   # each (T, F)
        >>> normed = cmvn.apply(feats)                                  # (T, F)
    """

    mean: np.ndarray  # (F,) float32
    istd: np.ndarray  # (F,) float32
    frames: int = 0

    @classmethod
    def from_features(cls, feats: Iterable[np.ndarray]) -> GlobalCMVN:
        """Accumulate sums in float64 over all frames of all (T, F) arrays."""
        total: np.ndarray | None = None
        total_sq: np.ndarray | None = None
        frames = 0
        for i, f in enumerate(feats):
            f = np.asarray(f, dtype=np.float64)  # (T, F)
            if f.ndim != 2:
                raise ValueError(f"GlobalCMVN: feature #{i} has shape {f.shape}, expected (T, F)")
            if total is None:
                total = np.zeros(f.shape[1])
                total_sq = np.zeros(f.shape[1])
            elif f.shape[1] != total.shape[0]:
                raise ValueError(
                    f"GlobalCMVN: feature #{i} has {f.shape[1]} dims, earlier ones had "
                    f"{total.shape[0]}"
                )
            total += f.sum(axis=0)
            total_sq += (f * f).sum(axis=0)
            frames += f.shape[0]
        if total is None or total_sq is None or frames == 0:
            raise ValueError("GlobalCMVN.from_features: no frames given")
        mean = total / frames
        var = np.maximum(total_sq / frames - mean * mean, 1e-10)
        return cls(mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32), frames)

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """(T, F) -> (T, F) normalised features."""
        return ((feats - self.mean) * self.istd).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write JSON {"mean": [...], "istd": [...], "frames": n} atomically."""
        obj = {"mean": self.mean.tolist(), "istd": self.istd.tolist(), "frames": int(self.frames)}
        atomic_write_text(path, json.dumps(obj))

    @classmethod
    def load(cls, path: str | Path) -> GlobalCMVN:
        """Read a file written by :meth:`save`; raises DataError naming the file when malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"CMVN file {path} does not exist; compute it from training features")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            mean = np.asarray(obj["mean"], dtype=np.float32)
            istd = np.asarray(obj["istd"], dtype=np.float32)
            frames = int(obj.get("frames", 0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(
                f'CMVN file {path} is malformed ({e}); expected {{"mean": [...], "istd": [...]}}'
            ) from e
        if mean.ndim != 1 or mean.shape != istd.shape or not mean.size:
            raise DataError(f"CMVN file {path}: mean {mean.shape} / istd {istd.shape} mismatch")
        if not (np.isfinite(mean).all() and np.isfinite(istd).all()):
            raise DataError(f"CMVN file {path} contains non-finite values")
        return cls(mean, istd, frames)

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, istd) as float32 tensors of shape (F,)."""
        return torch.from_numpy(self.mean.copy()), torch.from_numpy(self.istd.copy())


def spec_augment(
    feats: torch.Tensor,
    cfg: FeatureConfig,
    generator: torch.Generator | None = None,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment: (T, F) -> (T, F) copy with frequency and time bands set to `mask_value`.

    cfg.num_freq_masks bands of width U[0, max_freq_width]; cfg.num_time_masks bands of width
    U[0, min(max_time_width, 20% of T)]. Returns `feats` unchanged if cfg.spec_augment is False.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> spec_augment(torch.randn(100, 80), FeatureConfig(), g).shape
        torch.Size([100, 80])
    """
    if feats.dim() != 2:
        raise ValueError(f"spec_augment expects (T, F) features, got shape {tuple(feats.shape)}")
    if not cfg.spec_augment:
        return feats
    out = feats.clone()  # (T, F)
    num_frames, num_bins = out.shape

    def band(size: int, max_width: int) -> tuple[int, int]:
        width = int(torch.randint(0, max_width + 1, (1,), generator=generator))
        start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
        return start, width

    max_f = min(cfg.max_freq_width, num_bins)
    for _ in range(cfg.num_freq_masks):
        start, width = band(num_bins, max_f)
        out[:, start : start + width] = mask_value
    max_t = min(cfg.max_time_width, int(0.2 * num_frames))
    for _ in range(cfg.num_time_masks):
        start, width = band(num_frames, max_t)
        out[start : start + width, :] = mask_value
    return out
