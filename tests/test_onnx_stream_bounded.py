"""examples/onnx_transcribe.py --stream: endpoints close utterances and reset the caches, so the
state of a long stream stays bounded (as `ume transcribe --stream`'s decoder)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ume.cli import main

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "ume" / "models" / "dense_paper"
spec = importlib.util.spec_from_file_location(
    "onnx_transcribe", ROOT / "examples/onnx_transcribe.py"
)
ex = importlib.util.module_from_spec(spec)
sys.modules["onnx_transcribe"] = ex  # dataclasses look their module up
spec.loader.exec_module(ex)

RT = {"att_cache": [2, 1, 0, 4], "cnn_cache": [2, 3, 2], "window": 7, "stride": 4, "min_input": 7}


class FakeStream:
    """The streaming graph's contract in numpy: every chunk appends 2 frames to the attention
    cache (a graph exported with left chunks -1 keeps them all) and emits 2 frames whose best
    label follows `labels` (0 = blank)."""

    def __init__(self, labels: list[int]) -> None:
        self.labels, self.t = labels, 0

    def get_inputs(self) -> list:
        return [type("I", (), {"name": n})() for n in ("feats", "att_cache", "cnn_cache", "offset")]

    def run(self, _: None, feed: dict) -> tuple:
        lp = np.full((1, 2, 5), -9.0, np.float32)
        for j in range(2):
            lp[0, j, self.labels[self.t % len(self.labels)]] = 0.0
            self.t += 1
        att = feed["att_cache"]
        new = np.concatenate([att, np.ones((2, 1, 2, 4), np.float32)], axis=2)
        return None, lp, new, feed["cnn_cache"]


def test_stream_state_stays_bounded_with_endpoints() -> None:
    # 4 frames of speech then 8 of blank, repeated: 0.1 s per encoder frame -> a 0.5 s pause
    labels = [3, 3, 4, 4] + [0] * 8
    feats = np.zeros((4 * 600 + 3, 2), np.float32)  # 600 chunks, 1200 encoder frames
    sizes: list[int] = []
    ep = ex.Endpoint(silence_after_speech=0.5, silence_alone=5.0, max_utterance=20.0)
    utts = list(ex.stream_utterances(FakeStream(labels), RT, feats, 0.1, ep, sizes))
    assert len(sizes) == 600
    assert max(sizes) <= 12  # one utterance of 12 encoder frames at most
    assert len(utts) == 100 and all(u == [3, 4] for u in utts)
    # max_utterance alone bounds it too: speech without pauses
    sizes = []
    ep = ex.Endpoint(0.0, 0.0, max_utterance=2.0)
    utts = list(ex.stream_utterances(FakeStream([3, 4]), RT, feats, 0.1, ep, sizes))
    assert max(sizes) <= 20 and len(utts) == 60
    # without an endpoint the cache grows with the stream (what the bound prevents)
    sizes = []
    utts = list(ex.stream_utterances(FakeStream(labels), RT, feats, 0.1, None, sizes))
    assert sizes[-1] == 1200 and len(utts) == 1
    assert ex.make_endpoint(0, 0) is None
    assert ex.make_endpoint(0.5, 0) == ex.Endpoint(0.5, 5.0, 0.0)


def test_silence_only_stream_gives_one_empty_result() -> None:
    feats = np.zeros((4 * 100 + 3, 2), np.float32)
    ep = ex.Endpoint()
    assert list(ex.stream_utterances(FakeStream([0]), RT, feats, 0.1, ep)) == [[]]


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="no bundled model")
def test_long_stream_matches_ume_transcribe(tmp_path: Path, capsys) -> None:
    """A 40 s stream of speech and pauses: the example's utterances are `ume transcribe
    --stream`'s, and its attention cache never holds more than one utterance."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt) to synthesise test speech")
    one = tmp_path / "one.wav"
    subprocess.run(["espeak-ng", "-w", str(one), "hello world, good morning"], check=True)
    data, sr = sf.read(one, dtype="float32")
    pause = np.zeros(int(1.6 * sr), np.float32)
    wave = np.concatenate([np.concatenate([data, pause])] * 12)
    long = tmp_path / "long.wav"
    sf.write(long, wave, sr)
    out = tmp_path / "deploy" / "encoder.onnx"
    assert main(["export", "--model", str(BUNDLED), "--out", str(out)]) == 0
    capsys.readouterr()
    args = ["--model", str(BUNDLED), "--mode", "ctc_greedy", "--stream", "--chunk-size", "16"]
    assert main(["transcribe", *args, str(long)]) == 0
    want = capsys.readouterr().out
    got = subprocess.run(
        [sys.executable, "-I", str(ROOT / "examples/onnx_transcribe.py"), str(out), str(long), "--stream"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert got == want
    assert len(want.splitlines()) >= 6  # many utterances, not one
    # the cache stays within one utterance (<= 20 s at the default max) over the whole stream
    import json

    rt = json.loads((out.parent / "runtime.json").read_text())
    fc = json.loads((out.parent / "features.json").read_text())
    feats = ex.fbank(ex.read_wave(str(long), 16000), fc)
    sec = rt["subsampling"] * fc["frame_shift_ms"] / 1000
    sizes: list[int] = []
    sess = ex.session(out.parent / rt["files"]["stream"])
    list(ex.stream_utterances(sess, rt, feats, sec, ex.make_endpoint(1.0, 20.0), sizes))
    stream_frames = len(sizes) * rt["chunk_size"]  # encoder frames of the whole stream
    assert len(sizes) >= 25 and max(sizes) * sec <= 20.0 + rt["chunk_size"] * sec
    assert 4 * max(sizes) <= stream_frames  # a few chunks, not the stream (was: all of it)
