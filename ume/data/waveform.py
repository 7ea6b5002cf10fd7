"""In-memory audio from the caller (numpy or torch arrays) -> float32 mono 16 kHz samples.

Accepted:
    shape  (N,) mono; (C, N) channels first, as `torchaudio.load` returns; (N, C) channels
           last, as `soundfile.read` returns. Of a 2-D array the axis with at most
           MAX_CHANNELS entries is the channel axis and the other one time; channels are
           averaged. A 2-D shape where both or neither axis could be channels is refused.
    dtype  float (samples in [-1, 1]); int16 (/ 32768), int32 (/ 2**31), int8 (/ 128), uint8
           (8-bit WAV: (x - 128) / 128). A float array whose peak exceeds MAX_FLOAT_PEAK holds
           integer-scaled samples and is refused (divide it by 32768 first).
Anything else (NaN or infinite samples, no samples, 3-D arrays, bool, complex, int64) is refused
with an `AudioInputError` saying what to pass instead.

Example:
    >>> wave, sr = torchaudio.load("a.wav")                  # (C, N) float32
    >>> as_mono_16k(wave, sr).shape                          # (N * 16000 / sr,)
    >>> as_mono_16k(np.zeros((16000, 2), np.int16), 16000)   # (16000,) float32 in [-1, 1]
"""

from __future__ import annotations

import numpy as np

from ume.errors import UmeError

TARGET_RATE = 16000
MAX_CHANNELS = 8
MAX_FLOAT_PEAK = 2.0

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2.0**31, np.dtype(np.int8): 128.0}


class AudioInputError(UmeError):
    """An audio array of a shape, dtype or value range ume cannot read unambiguously."""


def _to_numpy(audio: object) -> np.ndarray:
    """numpy array, torch tensor (any device, with or without grad), or a sequence -> ndarray."""
    if hasattr(audio, "detach") and hasattr(
        audio, "cpu"
    ):  # a torch.Tensor, without importing torch
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio)


def _to_float(x: np.ndarray) -> np.ndarray:
    """Samples of any accepted dtype -> float32 in [-1, 1]."""
    dt = x.dtype
    if dt == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if dt in _INT_SCALE:
        return (x.astype(np.float64) / _INT_SCALE[dt]).astype(np.float32)
    if np.issubdtype(dt, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise AudioInputError("the audio array holds NaN or infinite samples")
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > MAX_FLOAT_PEAK:
            raise AudioInputError(
                f"float audio samples must lie in [-1, 1], but the peak is {peak:g}: these look "
                "like integer PCM values stored as float; pass the int16 array itself, or "
                "divide by 32768"
            )
        return x
    raise AudioInputError(
        f"audio array dtype {dt} is not supported: pass float samples in [-1, 1] or int16 / "
        "int32 / int8 / uint8 PCM"
    )


def _mono(x: np.ndarray) -> np.ndarray:
    """(N,) | (C, N) | (N, C) -> (N,), averaging channels."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioInputError(
            f"audio array has shape {x.shape}: pass one recording as (N,) mono, (channels, N) "
            "or (N, channels); for a batch, call once per recording"
        )
    rows_are_channels = x.shape[0] <= MAX_CHANNELS
    cols_are_channels = x.shape[1] <= MAX_CHANNELS
    if rows_are_channels == cols_are_channels:
        raise AudioInputError(
            f"audio array of shape {x.shape} is ambiguous: ume takes (channels, N) or "
            f"(N, channels) with at most {MAX_CHANNELS} channels and more samples than "
            "channels; pass the mono signal as (N,) (e.g. audio.mean(axis=channel_axis))"
        )
    return x.mean(axis=0) if rows_are_channels else x.mean(axis=1)


def as_mono_16k(audio: object, sample_rate: int = TARGET_RATE) -> np.ndarray:
    """Caller's audio array (see the module docstring) at `sample_rate` Hz -> (N',) float32
    mono at 16 kHz, C-contiguous."""
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise AudioInputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    x = _to_numpy(audio)
    if x.size == 0:
        raise AudioInputError(f"the audio array of shape {x.shape} holds no samples")
    wave = _mono(_to_float(x))  # (N,)
    if sample_rate != TARGET_RATE:
        import soxr

        wave = soxr.resample(wave, int(sample_rate), TARGET_RATE)  # (N * 16000 / sr,)
    return np.ascontiguousarray(wave, dtype=np.float32)
