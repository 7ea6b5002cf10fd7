"""Numerical audio augmentation for the synthetic corpus (numpy only, no scipy).

* additive noise: white, pink (1/f, shaped in the FFT domain) or babble (a sum of other
  utterances), at a chosen SNR measured against the speech power;
* reverberation with a synthetic exponentially-decaying impulse response (given RT60);
* leading/trailing silence and peak normalisation.

Example:
    >>> import numpy as np
    >>> from ume.data.augment import AugmentParams, augment
    >>> rng = np.random.default_rng(0)
    >>> speech = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    >>> p = AugmentParams(noise="pink", snr_db=15.0, rt60=0.4, lead_s=0.1, trail_s=0.2)
    >>> y = augment(speech, p, rng)
    >>> len(y) > len(speech), float(abs(y).max()) <= 0.9 + 1e-6
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

NOISE_TYPES = ("none", "white", "pink", "babble")
CHANNELS = ("none", "telephone", "codec", "far_field")


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation recipe of one utterance (all random choices are made by the caller).

    Attributes:
        noise: one of ``none``, ``white``, ``pink``, ``babble``.
        snr_db: signal-to-noise ratio of the additive noise (ignored for ``none``).
        rt60: reverberation time in seconds, or ``None`` for no reverberation.
        lead_s / trail_s: silence (before noise) added before / after the speech.
        peak: absolute peak of the output waveform (< 1 so 16-bit PCM never clips).
        speed: speed perturbation factor (resampling: tempo and pitch change together).
        channel: what the audio comes through, one of :data:`CHANNELS`: ``none``;
            ``telephone`` (300-3400 Hz band at 8 kHz, G.711 mu-law, back to 16 kHz);
            ``codec`` (Ogg Vorbis at a low quality setting, decoded again); ``far_field`` (a
            distant talker: long reverberation with a weak direct path).
    """

    noise: str = "none"
    snr_db: float = 20.0
    rt60: float | None = None
    lead_s: float = 0.1
    trail_s: float = 0.1
    peak: float = 0.9
    speed: float = 1.0
    channel: str = "none"

    def to_dict(self) -> dict:
        d = asdict(self)
        # fields added later are left out at their defaults, so that corpora planned before
        # them keep their fingerprint (and are reused, not re-rendered)
        for k, default in (("speed", 1.0), ("channel", "none")):
            if d[k] == default:
                del d[k]
        return d


def sample_augment_params(rng: np.random.Generator) -> AugmentParams:
    """Draw a random recipe: ~25% clean, else white/pink/babble noise at 10-30 dB SNR;
    reverberation with probability 0.3 (RT60 0.2-0.6 s); 0.05-0.3 s silence each side."""
    noise = str(rng.choice(NOISE_TYPES, p=[0.25, 0.2, 0.3, 0.25]))
    snr = round(float(rng.uniform(10.0, 30.0)), 2)
    rt60 = round(float(rng.uniform(0.2, 0.6)), 3) if rng.random() < 0.3 else None
    lead = round(float(rng.uniform(0.05, 0.3)), 3)
    trail = round(float(rng.uniform(0.05, 0.3)), 3)
    peak = round(float(rng.uniform(0.5, 0.95)), 3)
    return AugmentParams(noise=noise, snr_db=snr, rt60=rt60, lead_s=lead, trail_s=trail, peak=peak)


def sample_wide_augment_params(rng: np.random.Generator) -> AugmentParams:
    """The ``wide`` recipe: :func:`sample_augment_params` plus speed perturbation (0.9-1.1,
    uniform) and a channel (none 55%, telephone 15%, codec 15%, far field 15%; far field
    draws its own RT60 of 0.6-1.2 s)."""
    base = sample_augment_params(rng)
    speed = round(float(rng.uniform(0.9, 1.1)), 3)
    channel = str(rng.choice(CHANNELS, p=[0.55, 0.15, 0.15, 0.15]))
    rt60 = round(float(rng.uniform(0.6, 1.2)), 3) if channel == "far_field" else base.rt60
    return replace(base, speed=speed, channel=channel, rt60=rt60)


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """Change speed like ``sox speed factor``: tempo and pitch scale, length becomes N / factor
    (Kaldi-style speed perturbation; the corpus builder's and the feature pipeline's).

    Example:
        >>> speed_perturb(np.zeros(16000, np.float32), 1.1).shape
        (14545,)
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"speed_perturb: factor must be a positive number, got {factor}")
    if factor == 1.0 or len(wave) == 0:
        return wave
    import soxr

    # reinterpret the samples as recorded at sample_rate * factor, then resample to sample_rate
    out = soxr.resample(np.asarray(wave, dtype=np.float32), sample_rate * factor, sample_rate)
    return np.ascontiguousarray(out, dtype=np.float32)  # (N / factor,)


def _mulaw(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """G.711-style mu-law companding quantised to 8 bits, and back."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    y = np.round((y + 1.0) * 127.5) / 127.5 - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def _bandpass(x: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0.0
    return np.fft.irfft(spec, len(x)).astype(np.float32)


def telephone(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Narrow-band telephone channel: 300-3400 Hz, 8 kHz, mu-law, resampled back to `sr`."""
    import soxr

    if x.size == 0:
        return x
    y = peak_normalize(_bandpass(x, sr, 300.0, 3400.0), 0.9)
    y = soxr.resample(y, sr, 8000)
    return soxr.resample(_mulaw(y), 8000, sr).astype(np.float32)


def codec(x: np.ndarray, sr: int = 16000, quality: float = 0.1) -> np.ndarray:
    """Encode as Ogg Vorbis at `quality` (0-1, libsndfile's scale) and decode again."""
    import io

    import soundfile as sf

    if x.size == 0:
        return x
    buf = io.BytesIO()
    y = peak_normalize(x, 0.9)
    sf.write(buf, y, sr, format="OGG", subtype="VORBIS", compression_level=1.0 - quality)
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32")
    out = out[: len(x)]
    return np.pad(out, (0, len(x) - len(out))).astype(np.float32)


def apply_channel(x: np.ndarray, channel: str, sr: int = 16000) -> np.ndarray:
    """Pass `x` through one of :data:`CHANNELS` (``far_field`` acts through the RIR)."""
    if channel in ("none", "far_field"):
        return x
    if channel == "telephone":
        return telephone(x, sr)
    if channel == "codec":
        return codec(x, sr)
    raise ValueError(f"unknown channel {channel!r}; choose from {CHANNELS}")


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian white noise."""
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance pink (1/f power) noise made by spectral shaping of white noise."""
    if n <= 1:
        return np.zeros(n, dtype=np.float32)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec = spec / np.sqrt(f)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def babble_noise(sources: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Babble: each source is looped from a random offset to length `n`, then all are summed
    with random gains. Falls back to pink noise when no source is given."""
    srcs = [np.asarray(s, dtype=np.float32) for s in sources if len(s) > 0]
    if not srcs:
        return pink_noise(n, rng)
    out = np.zeros(n, dtype=np.float64)
    for s in srcs:
        s = s / (np.sqrt(np.mean(s.astype(np.float64) ** 2)) + 1e-12)
        reps = int(np.ceil((n + len(s)) / len(s)))
        off = int(rng.integers(0, len(s)))
        out += rng.uniform(0.5, 1.0) * np.tile(s, reps)[off : off + n]
    return (out / (np.std(out) + 1e-12)).astype(np.float32)


def synthetic_rir(rt60: float, sr: int, rng: np.random.Generator, far: bool = False) -> np.ndarray:
    """Exponentially-decaying Gaussian impulse response with a unit direct path.

    The envelope falls by 60 dB after `rt60` seconds; a short (1-5 ms) gap separates the direct
    path from the diffuse tail. Normalised to unit energy. `far`: a distant talker, whose
    reverberant tail carries more energy than the direct path.
    """
    n = max(2, int(rt60 * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078 -> -60 dB
    gap = int(rng.uniform(0.001, 0.005) * sr)
    h[1 : gap + 1] = 0.0
    drr = rng.uniform(1.5, 4.0) if far else rng.uniform(0.3, 0.7)  # reverb energy / direct
    h *= drr / (np.sqrt(np.sum(h[1:] ** 2)) + 1e-12)
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution via the real FFT (numpy only)."""
    n = len(x) + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]
    return y.astype(np.float32)


def reverberate(
    x: np.ndarray, rt60: float, sr: int, rng: np.random.Generator, far: bool = False
) -> np.ndarray:
    """Convolve `x` with a synthetic RIR; the output keeps the reverberant tail (len grows)."""
    return fft_convolve(x, synthetic_rir(rt60, sr, rng, far))


def add_noise(
    x: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float | None = None
) -> np.ndarray:
    """Return ``x + g * noise`` with g set so that speech_power / noise_power = SNR."""
    p_s = float(np.mean(x.astype(np.float64) ** 2)) if speech_power is None else speech_power
    p_n = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-20
    g = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return (x + g * noise[: len(x)]).astype(np.float32)


def peak_normalize(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that max |x| == peak (silence is returned unchanged)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m <= 0.0:
        return x.astype(np.float32)
    return (x * (peak / m)).astype(np.float32)


def augment(
    speech: np.ndarray,
    params: AugmentParams,
    rng: np.random.Generator,
    sr: int = 16000,
    babble_sources: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Apply speed -> reverb -> silence padding -> additive noise -> channel -> peak
    normalisation.

    The SNR is computed against the power of the (reverberant) speech before padding, and the
    noise covers the whole padded signal.
    """
    y = speed_perturb(np.asarray(speech, dtype=np.float32), params.speed, sr)
    if params.rt60:
        y = reverberate(y, params.rt60, sr, rng, far=params.channel == "far_field")
    speech_power = float(np.mean(y.astype(np.float64) ** 2)) if y.size else 0.0
    lead = np.zeros(int(round(params.lead_s * sr)), dtype=np.float32)
    trail = np.zeros(int(round(params.trail_s * sr)), dtype=np.float32)
    y = np.concatenate([lead, y, trail])
    if params.noise != "none":
        if params.noise == "white":
            noise = white_noise(len(y), rng)
        elif params.noise == "pink":
            noise = pink_noise(len(y), rng)
        elif params.noise == "babble":
            noise = babble_noise(babble_sources, len(y), rng)
        else:
            raise ValueError(f"unknown noise type {params.noise!r}")
        y = add_noise(y, noise, params.snr_db, speech_power)
    return peak_normalize(apply_channel(y, params.channel, sr), params.peak)
