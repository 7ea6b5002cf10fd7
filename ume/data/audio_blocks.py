"""Read an audio file block by block as float32 mono 16 kHz, never holding the whole file.

`read_blocks` is `load_audio` for files too long to hold at once: the same decoding
(soundfile), downmix (channel mean) and resampling (soxr, here its streaming resampler), one
block of `block_seconds` at a time. A file that cannot be read raises DataError naming it.

Example:
    >>> for block in read_blocks("lecture.flac"):   # (n,) float32, 16 kHz, n <= ~4 s
    ...     segmenter.accept(block)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from ume.data.manifest import DataError

TARGET_RATE = 16000


def audio_duration(path: str) -> float:
    """Seconds of audio in a file soundfile reads (from its header)."""
    if not os.path.isfile(path):
        raise DataError(f"audio file {path} not found")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(
            f"cannot read audio {path}: {e}. Is it a valid WAV/FLAC file? Convert it with "
            "sox/ffmpeg"
        ) from e
    return info.frames / info.samplerate if info.samplerate else 0.0


def read_blocks(path: str, block_seconds: float = 4.0) -> Iterator[np.ndarray]:
    """Yield the file's audio as float32 mono 16 kHz pieces (n,) of about block_seconds."""
    audio_duration(path)  # a clear error for a missing or unreadable file
    with sf.SoundFile(path) as f:
        rate = f.samplerate
        stream = soxr.ResampleStream(rate, TARGET_RATE, 1, dtype="float32")
        n = max(1, int(block_seconds * rate))
        got = 0
        while True:
            data = f.read(n, dtype="float32", always_2d=True)  # (n, C)
            last = len(data) < n
            got += len(data)
            x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (n,)
            if rate != TARGET_RATE:
                x = stream.resample_chunk(np.ascontiguousarray(x), last=last)
            if x.size:
                yield np.ascontiguousarray(x, dtype=np.float32)
            if last:
                break
    if got == 0:
        raise DataError(f"audio {path} has zero samples")
