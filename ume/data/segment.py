"""Cut long audio into utterance-sized segments at pauses, online, with bounded memory.

`PauseSegmenter` takes float32 mono 16 kHz audio in pieces of any size (`accept`) and returns
each segment as soon as it is closed, so an hour-long recording is never held whole: the
segmenter keeps at most `max_seconds` + `pad` of audio plus the piece being read.

Speech / pause per 10 ms frame, from the frame's energy in dB against an adaptive threshold
    thr = floor + max(MIN_RANGE_DB, THRESHOLD_FRACTION * (level - floor))
where floor and level are the 10th and 95th percentiles of the energies of the last
`history_seconds` (digitally silent frames, below SILENCE_DB, are left out of both and are
always pauses). A segment opens at the first speech frame (minus `pad` seconds of the audio
before it) and closes when `min_pause` seconds pass without speech (keeping `pad` seconds after
the last speech frame). A segment that reaches `max_seconds` without such a pause is cut at the
quietest 50 ms in its second half (between words, usually), and the rest goes on as the next
segment. Segments with less than `min_speech` seconds of speech frames (clicks) are dropped.

Segment times are absolute: `start` is the first sample's index in the whole stream.

Example:
    >>> seg = PauseSegmenter(max_seconds=20.0)
    >>> for piece in pieces:                     # float32 (n,) at 16 kHz
    ...     for s in seg.accept(piece):
    ...         print(s.start_s, s.end_s, len(s.wave))
    >>> rest = seg.finish()
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ume.errors import UmeError

RATE = 16000
HOP = 160  # samples per 10 ms frame
SILENCE_DB = -70.0
THRESHOLD_FRACTION = 0.3
MIN_RANGE_DB = 6.0  # speech is at least this far above the floor (no speech heard yet)
SMOOTH_FRAMES = 5  # 50 ms: the window the fallback cut minimises energy over


@dataclass
class Segment:
    """Audio [start, start + len(wave)) of the stream, in samples at 16 kHz."""

    start: int
    wave: np.ndarray  # (n,) float32

    @property
    def end(self) -> int:
        return self.start + len(self.wave)

    @property
    def start_s(self) -> float:
        return self.start / RATE

    @property
    def end_s(self) -> float:
        return self.end / RATE


def frame_energy_db(wave: np.ndarray) -> np.ndarray:
    """(k·HOP,) samples -> (k,) mean-square energy per 10 ms frame, in dB (full scale 0 dB)."""
    frames = wave.reshape(-1, HOP).astype(np.float64)  # (k, HOP)
    return 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)


class PauseSegmenter:
    """Online pause-based segmentation (see the module docstring)."""

    def __init__(
        self,
        max_seconds: float = 20.0,
        min_pause: float = 0.3,
        pad: float = 0.2,
        min_speech: float = 0.1,
        history_seconds: float = 30.0,
    ) -> None:
        if not max_seconds >= 1.0:
            raise UmeError(f"segments must be allowed at least 1 s (max_seconds={max_seconds})")
        if not 0.0 < min_pause < max_seconds / 2:
            raise UmeError(f"min_pause={min_pause} must be > 0 and below max_seconds / 2")
        if pad < 0 or min_speech < 0:
            raise UmeError(f"pad={pad} and min_speech={min_speech} must be >= 0")
        self.max_samples = int(max_seconds * RATE)
        self.pause_frames = max(1, round(min_pause * RATE / HOP))
        self.pad = int(pad * RATE)
        self.min_speech_frames = round(min_speech * RATE / HOP)
        self.history: deque[float] = deque(maxlen=max(1, round(history_seconds * RATE / HOP)))
        self.buf = np.zeros(0, np.float32)  # samples [buf_start, buf_start + len(buf))
        self.buf_start = 0
        self.frames_done = 0  # frames classified so far (frame k = samples [k·HOP, (k+1)·HOP))
        self.prev_end = 0  # end sample of the last emitted segment
        self.seg_start: int | None = None  # open segment's first sample, or None
        self.last_speech = -1  # last speech frame of the open segment
        # per frame of the open segment, from the frame of seg_start on: energy (dB), speech?
        self.seg_energy: list[float] = []
        self.seg_flags: list[bool] = []
        self.finished = False

    # ---- input --------------------------------------------------------------------------------
    def accept(self, wave: np.ndarray) -> list[Segment]:
        """Append samples (n,) float32 at 16 kHz; returns the segments closed by them."""
        if self.finished:
            raise RuntimeError("PauseSegmenter.accept after finish: start a new segmenter")
        self.buf = np.concatenate([self.buf, np.asarray(wave, np.float32).reshape(-1)])
        out: list[Segment] = []
        end = self.buf_start + len(self.buf)
        k_end = end // HOP
        if k_end > self.frames_done:
            a = self.frames_done * HOP - self.buf_start
            energy = frame_energy_db(self.buf[a : a + (k_end - self.frames_done) * HOP])
            self.history.extend(float(e) for e in energy if e > SILENCE_DB)
            thr = self.threshold()
            for e in energy:
                self._frame(float(e), e > thr and e > SILENCE_DB, out)
        self._trim()
        return out

    def finish(self) -> list[Segment]:
        """End of audio: the open segment (if any speech) -> its segment."""
        out: list[Segment] = []
        if not self.finished and self.seg_start is not None:
            end = min(self.buf_start + len(self.buf), (self.last_speech + 1) * HOP + self.pad)
            self._emit(end, out)
        self.finished = True
        self.buf = self.buf[:0]
        return out

    def threshold(self) -> float:
        """The current speech/pause threshold in dB (see the module docstring)."""
        if not self.history:
            return SILENCE_DB
        floor, level = np.percentile(np.fromiter(self.history, float), [10, 95])
        return float(floor + max(MIN_RANGE_DB, THRESHOLD_FRACTION * (level - floor)))

    # ---- the state machine ----------------------------------------------------------------------
    def _frame(self, energy: float, speech: bool, out: list[Segment]) -> None:
        k = self.frames_done
        self.frames_done += 1
        if self.seg_start is None:
            if not speech:
                return
            self.seg_start = max(k * HOP - self.pad, self.prev_end, self.buf_start)
            # the frames between seg_start and k were pauses
            n_before = k - self.seg_start // HOP
            self.seg_energy = [SILENCE_DB] * n_before
            self.seg_flags = [False] * n_before
        self.seg_energy.append(energy)
        self.seg_flags.append(speech)
        if speech:
            self.last_speech = k
        elif k - self.last_speech >= self.pause_frames:
            self._emit((self.last_speech + 1) * HOP + self.pad, out)
            return
        if (k + 1) * HOP - self.seg_start >= self.max_samples:
            self._cut_quietest(out)

    def _cut_quietest(self, out: list[Segment]) -> None:
        """Cut the open segment (too long, no pause) at the quietest 50 ms of its second half;
        what follows the cut stays open as the next segment."""
        assert self.seg_start is not None
        first = self.seg_start // HOP
        e = np.asarray(self.seg_energy)  # (frames,) from frame `first` on
        smooth = np.convolve(e, np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES, mode="same")
        lo = len(e) // 2
        i = lo + int(np.argmin(smooth[lo:]))  # cut before frame first + i
        energy, flags = self.seg_energy[i:], self.seg_flags[i:]
        self.seg_flags = self.seg_flags[:i]
        self._emit((first + i) * HOP, out)
        if any(flags):
            self.seg_start = (first + i) * HOP
            self.seg_energy, self.seg_flags = energy, flags

    def _emit(self, end: int, out: list[Segment]) -> None:
        assert self.seg_start is not None
        end = min(max(end, self.seg_start), self.buf_start + len(self.buf))
        if sum(self.seg_flags) >= max(1, self.min_speech_frames):
            a, b = self.seg_start - self.buf_start, end - self.buf_start
            out.append(Segment(self.seg_start, self.buf[a:b].copy()))
        self.prev_end = end
        self.seg_start = None
        self.seg_energy, self.seg_flags = [], []

    def _trim(self) -> None:
        """Drop audio that no segment can need any more."""
        if self.seg_start is not None:
            keep = self.seg_start
        else:
            keep = max(self.prev_end, self.frames_done * HOP - self.pad)
        drop = min(keep - self.buf_start, len(self.buf))
        if drop > 0:
            self.buf = self.buf[drop:].copy()
            self.buf_start += drop
