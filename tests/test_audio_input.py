"""Audio arrays from callers (`ume.data.waveform.as_mono_16k`): every channel layout and PCM
dtype that numpy/torch/torchaudio/soundfile hand out is read as the same mono signal, and an
array ume cannot read unambiguously is refused with a message saying what to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ume.data.waveform import AudioInputError, as_mono_16k
from ume.errors import UmeError


def _tone(n: int = 16000) -> np.ndarray:
    t = np.arange(n) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # (N,)


def test_layouts_give_the_same_mono_signal() -> None:
    x = _tone()
    want = as_mono_16k(x)
    assert want.shape == (16000,) and want.dtype == np.float32
    layouts = {
        "(1, N) torchaudio mono": x[None],
        "(2, N) torchaudio stereo": np.stack([x, x]),
        "(N, 2) soundfile stereo": np.stack([x, x], axis=1),
        "(N, 1)": x[:, None],
        "torch (1, N)": torch.from_numpy(x)[None],
        "torch (2, N) float64 with grad": torch.from_numpy(np.stack([x, x])).double().requires_grad_(),
        "list": x.tolist(),
    }  # fmt: skip
    for name, arr in layouts.items():
        got = as_mono_16k(arr)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    # channels are averaged
    np.testing.assert_allclose(as_mono_16k(np.stack([x, np.zeros_like(x)])), x / 2, atol=1e-6)


def test_integer_pcm_is_rescaled() -> None:
    x = _tone()
    for dtype, scale in ((np.int16, 32767), (np.int32, 2**31 - 1), (np.int8, 127)):
        pcm = np.round(x * scale).astype(dtype)
        np.testing.assert_allclose(as_mono_16k(pcm), x, atol=2.0 / scale + 1e-6, err_msg=dtype)
        np.testing.assert_allclose(as_mono_16k(torch.from_numpy(pcm)[None]), x, atol=2.0 / scale)
    u8 = np.round(x * 127 + 128).astype(np.uint8)  # 8-bit WAV is unsigned
    np.testing.assert_allclose(as_mono_16k(u8), x, atol=0.01)


def test_resampled_to_16k() -> None:
    x = _tone(44100)
    assert as_mono_16k(np.stack([x, x]), 44100).shape == (16000,)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((4, 4), np.float32), "ambiguous"),
        (np.zeros((100, 100), np.float32), "ambiguous"),
        (np.zeros((1, 2, 1600), np.float32), "one recording"),
        (np.zeros(0, np.float32), "no samples"),
        (np.full(1600, np.nan, np.float32), "NaN"),
        (np.full(1600, 1000.0, np.float32), "integer PCM values stored as float"),
        (np.zeros(1600, np.int64), "int64 is not supported"),
        (np.zeros(1600, bool), "bool is not supported"),
    ],
)
def test_unreadable_arrays_are_refused(arr: np.ndarray, match: str) -> None:
    with pytest.raises(AudioInputError, match=match) as e:
        as_mono_16k(arr)
    assert isinstance(e.value, UmeError) and isinstance(e.value, ValueError)


def test_bad_sample_rate_is_refused() -> None:
    with pytest.raises(AudioInputError, match="sample_rate"):
        as_mono_16k(_tone(), 0)
