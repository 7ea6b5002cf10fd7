"""Kaldi pipe entries (`cmd |` in wav.scp) run with a timeout: a hung command is killed (its
children too) and its utterance skipped and counted, instead of blocking training forever."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ume.config import FeatureConfig
from ume.data.loader import FeatureStore
from ume.data.manifest import DataError, load_audio, load_manifest


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UME_PIPE_TIMEOUT", "1")


@pytest.mark.parametrize("cmd", ["sleep 6 |", "sh -c 'sleep 6; echo x' |"])
def test_hung_pipe_times_out(cmd: str, short_timeout: None) -> None:
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"timed out after 1 s.*UME_PIPE_TIMEOUT") as e:
        load_audio(cmd)
    assert time.monotonic() - t0 < 4  # the grandchild holding the pipe was killed too
    assert "sleep 6" in str(e.value)


def test_hung_pipe_is_a_counted_skip(tmp_path: Path, short_timeout: None) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"ok {wav}\npiped cat {wav} |\nhung sleep 6 |\n")
    (d / "text").write_text("ok 你好\npiped 好\nhung 再见\n")
    utts, skipped = load_manifest(d)
    assert not skipped and len(utts) == 3
    store = FeatureStore.build(utts, FeatureConfig(), progress=False)
    assert [u.key for u in store.utts] == ["ok", "piped"]
    assert len(store.skipped) == 1
    msg = store.skipped[0]
    assert msg.startswith("hung: ") and "'sleep 6'" in msg and "timed out" in msg


def test_bad_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UME_PIPE_TIMEOUT", "soon")
    with pytest.raises(DataError, match="UME_PIPE_TIMEOUT='soon'"):
        load_audio("true |")
