"""Long audio is cut at pauses with bounded memory (`ume.data.segment.PauseSegmenter`), and
`transcribe_pieces` decodes it segment by segment with times in the whole recording."""

from __future__ import annotations

import numpy as np
import pytest

from ume.data.segment import HOP, RATE, PauseSegmenter

NOISE = 0.003  # background noise amplitude (about -50 dB)


def _bursts(lengths: list[float], pause: float, seed: int = 0) -> tuple[np.ndarray, list]:
    """Speech-like bursts (noise modulated at 4 Hz, about -15 dB) separated by `pause` s of
    background noise -> wave (N,), [(start_s, end_s)] of each burst."""
    rng = np.random.default_rng(seed)
    parts, spans, pos = [], [], 0
    for i, length in enumerate([pause, *lengths]):
        n = int(length * RATE)
        x = rng.normal(0, NOISE, n)
        if i > 0:  # a burst
            env = 0.5 + 0.5 * np.abs(np.sin(np.pi * 4 * np.arange(n) / RATE))
            x += rng.normal(0, 0.2, n) * env
            spans.append((pos / RATE, (pos + n) / RATE))
            quiet = rng.normal(0, NOISE, int(pause * RATE))
            x = np.concatenate([x, quiet])
        parts.append(x)
        pos += len(x)
    return np.concatenate(parts).astype(np.float32), spans


def _run(seg: PauseSegmenter, wave: np.ndarray, piece: int) -> tuple[list, int]:
    out, most = [], 0
    for i in range(0, len(wave), piece):
        out += seg.accept(wave[i : i + piece])
        most = max(most, len(seg.buf))
    return out + seg.finish(), most


def test_cuts_at_pauses_and_keeps_each_burst_whole() -> None:
    lengths = [1.2, 2.5, 0.8, 3.0, 1.7]
    wave, spans = _bursts(lengths, pause=0.6)
    segs, _ = _run(PauseSegmenter(max_seconds=20.0), wave, piece=RATE // 2)
    assert len(segs) == len(spans)
    for s, (a, b) in zip(segs, spans):
        # the whole burst, plus at most the 0.2 s pad (and a frame) of pause on each side
        assert s.start_s <= a and s.end_s >= b - HOP / RATE, (s.start_s, s.end_s, a, b)
        assert s.start_s >= a - 0.2 - 0.011 and s.end_s <= b + 0.2 + 0.011
        np.testing.assert_array_equal(s.wave, wave[s.start : s.end])  # the stream's own samples
    assert all(x.end <= y.start for x, y in zip(segs, segs[1:]))


def test_long_speech_without_pauses_is_cut_to_bounded_segments() -> None:
    # 47 s of 0.9 s words with 0.15 s gaps: never a 0.3 s pause, so only the fallback cuts
    wave, spans = _bursts([0.9] * 45, pause=0.15)
    segs, most = _run(PauseSegmenter(max_seconds=8.0), wave, piece=RATE)
    assert len(segs) >= 6
    assert max(len(s.wave) for s in segs) <= 8 * RATE
    # consecutive: the fallback cuts lose no audio between segments ...
    assert all(x.end == y.start for x, y in zip(segs, segs[1:]))
    assert segs[0].start_s <= spans[0][0] and segs[-1].end_s >= spans[-1][1] - 0.01
    # ... and fall in the gaps between words (the quietest 50 ms)
    for s in segs[1:]:
        assert any(b - 0.03 <= s.start_s <= b + 0.15 + 0.03 for _, b in spans), s.start_s
    assert most <= 8 * RATE + RATE + HOP  # memory: one segment plus one piece


def test_memory_stays_bounded_over_ten_minutes() -> None:
    wave, spans = _bursts([2.0, 3.5, 1.0, 4.0] * 48, pause=0.5, seed=1)  # 10 min
    seg = PauseSegmenter(max_seconds=20.0)
    segs, most = _run(seg, wave, piece=4 * RATE)
    assert len(wave) > 10 * 60 * RATE and len(segs) == len(spans)
    assert most <= 20 * RATE + 4 * RATE + HOP
    assert len(seg.history) <= 3000  # 30 s of frame energies


def test_digital_silence_and_silence_only_give_no_segment() -> None:
    assert _run(PauseSegmenter(), np.zeros(5 * RATE, np.float32), RATE)[0] == []
    quiet = np.random.default_rng(0).normal(0, NOISE, 5 * RATE).astype(np.float32)
    segs, _ = _run(PauseSegmenter(), quiet, RATE)
    assert sum(len(s.wave) for s in segs) < RATE  # stray noise frames, never the whole


def test_bad_settings_are_refused() -> None:
    from ume.errors import UmeError

    with pytest.raises(UmeError, match="max_seconds"):
        PauseSegmenter(max_seconds=0.5)
    with pytest.raises(UmeError, match="min_pause"):
        PauseSegmenter(max_seconds=4.0, min_pause=3.0)
