"""Thin wrappers around the offline TTS engines used by :mod:`ume.data.synth`.

Three command-line engines are supported, both called through ``subprocess`` with an argument
list (never a shell):

* ``espeak-ng`` (English accents and Mandarin via ``cmn-latn-pinyin``), with voice variants
  such as ``en-us+f2`` or ``cmn-latn-pinyin+m3``; per call we randomise rate (``-s``, words per
  minute) and pitch (``-p``, 0-99).
* ``flite`` (English only: ``kal``, ``kal16``, ``awb``, ``rms``, ``slt``); per call we randomise
  ``duration_stretch`` and ``int_f0_target_mean`` (the latter is ignored by ``rms``).
* ``festival`` (``text2wave``; English diphone and HTS voices), randomised duration stretch;
  the held-out synthesiser of the ``wide`` voice set.

Every rendering is returned as float32 mono audio at 16 kHz (resampled with soxr), with the
engine's own leading/trailing silence trimmed.

Example:
    >>> from ume.data.tts import ESPEAK_ZH_VOICES, render, sample_params
    >>> import numpy as np
    >>> v = ESPEAK_ZH_VOICES[0]
    >>> audio = render(v, "春眠不觉晓", sample_params(v, np.random.default_rng(0)))
    >>> audio.dtype, audio.ndim
    (dtype('float32'), 1)
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
_TIMEOUT_S = 60


class TTSError(RuntimeError):
    """A TTS engine failed (non-zero exit, timeout, unreadable or empty audio)."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Attributes:
        id: Kaldi-safe identifier, also used as the speaker id (e.g. ``esp_en-us_f2``).
        engine: ``"espeak"`` or ``"flite"``.
        lang: ``"zh"`` or ``"en"``.
        name: engine voice name (``en-us+f2`` for espeak, ``slt`` for flite).
        f0: nominal mean F0 in Hz (flite only: centre of the randomised ``int_f0_target_mean``).
    """

    id: str
    engine: str
    lang: str
    name: str
    f0: float = 0.0

    @property
    def variant(self) -> str | None:
        """espeak variant name (the part after ``+``), if any."""
        return self.name.split("+", 1)[1] if "+" in self.name else None


def _esp(lang_voice: str, variant: str | None, lang: str) -> Voice:
    short = "cmn" if lang_voice.startswith("cmn") else lang_voice
    vid = f"esp_{short}_{variant or 'default'}"
    name = f"{lang_voice}+{variant}" if variant else lang_voice
    return Voice(id=vid, engine="espeak", lang=lang, name=name)


def _flite(name: str, f0: float) -> Voice:
    return Voice(id=f"flite_{name}", engine="flite", lang="en", name=name, f0=f0)


# Mandarin MUST use cmn-latn-pinyin: the plain `cmn` voice reads some Hanzi as English-spoken
# pinyin with tone digits.
_ZH = "cmn-latn-pinyin"

# Ordered so that a prefix of each list is a diverse small pool (used by the `tiny` preset).
ESPEAK_ZH_VOICES: tuple[Voice, ...] = tuple(
    _esp(_ZH, v, "zh")
    for v in (
        "f1",
        "m3",
        "f2",
        "m1",
        "klatt",
        "f3",
        "m2",
        "f5",
        "m4",
        None,
        "m6",
        "Annie",
        "m7",
        "Andy",
    )
)
ENGLISH_VOICES: tuple[Voice, ...] = (
    _esp("en-us", "f2", "en"),
    _flite("awb", 130.0),
    _esp("en-gb", "m1", "en"),
    _flite("kal16", 105.0),
    _esp("en-gb-scotland", "f3", "en"),
    _esp("en-029", "m4", "en"),
    _flite("rms", 105.0),
    _esp("en-gb-x-rp", "f2", "en"),
    _esp("en-us-nyc", "m7", "en"),
    _flite("kal", 105.0),
    _esp("en-us", "m3", "en"),
    _esp("en-gb", "f1", "en"),
    _esp("en-gb-scotland", "m2", "en"),
    _esp("en-029", "f5", "en"),
    _esp("en-gb-x-rp", "m6", "en"),
    _esp("en-us-nyc", "f1", "en"),
    _esp("en-us", "klatt", "en"),
    _esp("en-gb", "klatt3", "en"),
    _esp("en-us", "Annie", "en"),
    _esp("en-gb", "Andy", "en"),
)
# Held-out voices (test split only). The espeak variants f4 and m5 and the flite voice slt are
# never used by any train/dev voice.
HELDOUT_ZH_VOICES: tuple[Voice, ...] = (_esp(_ZH, "f4", "zh"), _esp(_ZH, "m5", "zh"))
HELDOUT_EN_VOICES: tuple[Voice, ...] = (_flite("slt", 175.0), _esp("en-gb-x-rp", "f4", "en"))

# The wide voice set (``voice_set="wide"`` presets): every espeak-ng accent crossed with its
# voice variants, plus flite. Held-out variants are spoken by no train/dev voice in any accent.
_WIDE_VARIANTS = (
    "f1 f2 f3 f5 m1 m2 m3 m4 m6 m7 m8 klatt klatt2 klatt3 klatt4 klatt6 Annie Andy adam Alex "
    "Alicia aunty belinda benjamin caleb david ed edward iven iven2 john linda max Michael "
    "Mike paul quincy rob robert steph steph2 travis victor zac croak whisperf norbert"
).split()
_WIDE_HELDOUT_VARIANTS = "f4 m5 klatt5 grandma grandpa Lee steph3 Gene".split()
_WIDE_EN_ACCENTS = (
    "en-us en-gb en-gb-scotland en-029 en-gb-x-rp en-us-nyc en-gb-x-gbclan en-gb-x-gbcwmd"
).split()
WIDE_ZH_VOICES: tuple[Voice, ...] = tuple(_esp(_ZH, v, "zh") for v in (None, *_WIDE_VARIANTS))
WIDE_EN_VOICES: tuple[Voice, ...] = tuple(
    _esp(acc, v, "en") for v in _WIDE_VARIANTS for acc in _WIDE_EN_ACCENTS
) + (_flite("awb", 130.0), _flite("kal16", 105.0), _flite("rms", 105.0), _flite("kal", 105.0))
WIDE_HELDOUT_ZH_VOICES: tuple[Voice, ...] = tuple(
    _esp(_ZH, v, "zh") for v in _WIDE_HELDOUT_VARIANTS
)
WIDE_HELDOUT_EN_VOICES: tuple[Voice, ...] = (_flite("slt", 175.0),) + tuple(
    _esp(acc, v, "en") for v in _WIDE_HELDOUT_VARIANTS for acc in ("en-us", "en-gb-x-rp")
)
# A whole synthesiser that no train/dev utterance comes from: festival (English voices only;
# Debian has no festival voice for Mandarin, and classic espeak 1.48 ships no Mandarin
# dictionary, so the held-out-synthesiser split is English).
FESTIVAL_VOICES: tuple[Voice, ...] = (
    Voice(id="fest_kal", engine="festival", lang="en", name="kal_diphone"),
    Voice(id="fest_ked", engine="festival", lang="en", name="ked_diphone"),
    Voice(id="fest_slt_hts", engine="festival", lang="en", name="cmu_us_slt_arctic_hts"),
)
FESTIVAL_VOICE_DIR = "/usr/share/festival/voices"


def _run_text(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout + proc.stderr


@functools.cache
def espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(languages, variants) known to the installed espeak-ng, e.g. ``en-us`` and ``f2``."""
    if shutil.which("espeak-ng") is None:
        return frozenset(), frozenset()
    langs = {
        line.split()[1]
        for line in _run_text(["espeak-ng", "--voices"]).splitlines()[1:]
        if len(line.split()) > 1
    }
    variants = {
        field[3:]
        for line in _run_text(["espeak-ng", "--voices=variant"]).splitlines()[1:]
        for field in line.split()
        if field.startswith("!v/")
    }
    return frozenset(langs), frozenset(variants)


@functools.cache
def flite_voices() -> frozenset[str]:
    """Voices compiled into the installed flite (``flite -lv``)."""
    if shutil.which("flite") is None:
        return frozenset()
    out = _run_text(["flite", "-lv"])
    return frozenset(out.split(":", 1)[1].split()) if ":" in out else frozenset()


def voice_available(voice: Voice) -> bool:
    """True if the engine and voice are installed. Both engines silently fall back to a default
    voice for an unknown name, so the name is checked against the engine's own voice list."""
    if voice.engine == "flite":
        return voice.name in flite_voices()
    if voice.engine == "espeak":
        langs, variants = espeak_voices()
        base = voice.name.split("+", 1)[0]
        return base in langs and (voice.variant is None or voice.variant in variants)
    if voice.engine == "festival":
        return shutil.which("text2wave") is not None and any(
            os.path.isdir(os.path.join(FESTIVAL_VOICE_DIR, d, voice.name))
            for d in (os.listdir(FESTIVAL_VOICE_DIR) if os.path.isdir(FESTIVAL_VOICE_DIR) else ())
        )
    return False


def sample_params(voice: Voice, rng: np.random.Generator) -> dict[str, float | int]:
    """Random per-utterance prosody parameters for `voice` (JSON-serialisable)."""
    if voice.engine == "espeak":
        lo, hi = (140, 220) if voice.lang == "zh" else (130, 200)
        return {"rate": int(rng.integers(lo, hi + 1)), "pitch": int(rng.integers(30, 71))}
    if voice.engine == "festival":
        return {"stretch": round(float(rng.uniform(0.85, 1.2)), 3)}
    return {
        "stretch": round(float(rng.uniform(0.85, 1.2)), 3),
        "f0": round(float(voice.f0 * rng.uniform(0.85, 1.2)), 1),
    }


def _command(voice: Voice, text: str, params: dict, wav_path: str) -> list[str]:
    if voice.engine == "espeak":
        if text.startswith("-"):  # never let the text be parsed as an option
            text = " " + text
        return [
            "espeak-ng",
            "-v",
            voice.name,
            "-s",
            str(int(params["rate"])),
            "-p",
            str(int(params["pitch"])),
            "-w",
            wav_path,
            text,
        ]
    if voice.engine == "flite":
        return [
            "flite",
            "-voice",
            voice.name,
            "--setf",
            f"duration_stretch={float(params['stretch']):.3f}",
            "--setf",
            f"int_f0_target_mean={float(params['f0']):.1f}",
            "-t",
            text,
            "-o",
            wav_path,
        ]
    if voice.engine == "festival":
        # the text goes through a file (see render); the voice name is checked by
        # voice_available, so the Scheme expression holds no caller-controlled text
        stretch = float(params["stretch"])
        return [
            "text2wave",
            "-o",
            wav_path,
            "-eval",
            f"(voice_{voice.name})",
            "-eval",
            f"(Parameter.set 'Duration_Stretch {stretch:.3f})",
            wav_path + ".txt",
        ]
    raise ValueError(f"unknown TTS engine {voice.engine!r}")


def trim_silence(x: np.ndarray, sr: int = SAMPLE_RATE, top_db: float = 45.0) -> np.ndarray:
    """Cut leading/trailing parts quieter than `top_db` below the peak (keeps 10 ms margin)."""
    if x.size == 0:
        return x
    thr = float(np.max(np.abs(x))) * 10 ** (-top_db / 20)
    idx = np.flatnonzero(np.abs(x) > thr)
    if idx.size == 0:
        return x[:0]
    margin = int(0.01 * sr)
    return x[max(0, idx[0] - margin) : idx[-1] + 1 + margin]


def render(voice: Voice, text: str, params: dict, tmp_dir: str | None = None) -> np.ndarray:
    """Speak `text` with `voice`; returns trimmed float32 mono audio at 16 kHz.

    Raises:
        TTSError: if the engine fails or produces no audible audio.
    """
    if not text.strip():
        raise TTSError(f"{voice.id}: empty text")
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="ume_tts_") as td:
        wav_path = os.path.join(td, "out.wav")
        cmd = _command(voice, text, params, wav_path)
        if voice.engine == "festival":
            with open(wav_path + ".txt", "w", encoding="utf-8") as f:
                f.write(text)
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise TTSError(f"{voice.id}: {type(e).__name__}: {e}") from e
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[:200]
            raise TTSError(f"{voice.id}: exit status {proc.returncode}: {err}")
        try:
            audio, sr = sf.read(wav_path, dtype="float32", always_2d=True)
        except Exception as e:  # any unreadable output is a TTS failure
            raise TTSError(f"{voice.id}: unreadable audio: {e}") from e
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE and audio.size:
        audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    audio = trim_silence(audio)
    if audio.size < int(0.1 * SAMPLE_RATE) or float(np.max(np.abs(audio))) < 1e-3:
        raise TTSError(f"{voice.id}: empty or silent audio for {text[:40]!r}")
    return np.ascontiguousarray(audio, dtype=np.float32)
