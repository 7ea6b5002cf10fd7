"""Rendering one planned utterance: TTS for each segment, concatenation, babble and
augmentation; runs in worker processes and never raises (failures are reported per utterance).

Example:
    >>> audio = render_utterance(plan)   # float32 (N,) at 16 kHz  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf

from ume.atomic import atomic_path
from ume.data.augment import augment
from ume.data.synth_plan import UttPlan
from ume.data.tts import (
    SAMPLE_RATE,
    TTSError,
    render,
)

logger = logging.getLogger(__name__)


def render_utterance(plan: UttPlan) -> np.ndarray:
    """TTS every segment, concatenate (with a gap), then augment. Raises TTSError."""
    parts = []
    gap = np.zeros(int(round(plan.gap_s * SAMPLE_RATE)), dtype=np.float32)
    for i, (voice, text, params) in enumerate(plan.segments):
        if i:
            parts.append(gap)
        parts.append(render(voice, text, params))
    speech = np.concatenate(parts)
    babble = []
    for voice, text, params in plan.babble:
        try:
            babble.append(render(voice, text, params))
        except TTSError:  # babble is only noise: fall back to fewer talkers / pink noise
            continue
    rng = np.random.default_rng(list(plan.seed))
    return augment(speech, plan.aug, rng, SAMPLE_RATE, babble)


def _render_job(job: tuple[UttPlan, bool]) -> dict:
    """Worker: render one utterance to its wav file; never raises."""
    plan, reuse = job
    try:
        if reuse and os.path.isfile(plan.wav):
            info = sf.info(plan.wav)
            if info.samplerate == SAMPLE_RATE and info.frames > 0:
                return {"uttid": plan.uttid, "ok": True, "dur": info.frames / SAMPLE_RATE}
        audio = render_utterance(plan)
        with atomic_path(plan.wav) as tmp:
            sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return {"uttid": plan.uttid, "ok": True, "dur": len(audio) / SAMPLE_RATE}
    except TTSError as e:
        return {"uttid": plan.uttid, "ok": False, "error": f"TTS failure: {e}"}
    except Exception as e:  # never let one utterance kill the run
        return {"uttid": plan.uttid, "ok": False, "error": f"{type(e).__name__}: {e}"}
