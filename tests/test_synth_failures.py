"""`ume data synth` fails (exit 1, first errors shown, no summary) when more than 2% of the
utterances fail to render, instead of exiting 0 with a mostly empty corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ume.cli import main
from ume.data import synth
from ume.data.synth import FORTUNE_DIR

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None
    or shutil.which("flite") is None
    or not (FORTUNE_DIR / "chinese").is_file(),
    reason="planning the corpus needs espeak-ng, flite and fortunes-zh (apt)",
)


def _fake_render(fail_every: int):
    """A _render_job stand-in: every `fail_every`-th utterance fails, the rest 'render'."""
    seen = {"n": 0}

    def render(job):
        plan, _ = job
        seen["n"] += 1
        if seen["n"] % fail_every == 0:
            return {"uttid": plan.uttid, "ok": False, "error": "TTS failure: engine exited 1"}
        return {"uttid": plan.uttid, "ok": True, "dur": 1.0}

    return render


def test_synth_fails_above_the_failure_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(synth, "_render_job", _fake_render(4))  # 25% fail
    rc = main(["data", "synth", "--preset", "tiny", "--out", str(tmp_path), "--workers", "1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "failed to render" in err and "TTS failure: engine exited 1" in err
    assert "> 2%" in err
    assert not (tmp_path / "summary.json").exists()  # not mistaken for a finished corpus


def test_synth_tolerates_a_rare_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "_render_job", _fake_render(1000))  # none of tiny's 60 fail
    s = synth.synthesize("tiny", tmp_path, num_workers=1, progress=False)
    assert s["skipped_total"] == 0
    monkeypatch.setattr(synth, "_render_job", _fake_render(60))  # 1 of 60: 1.7% <= 2%
    s = synth.synthesize("tiny", tmp_path / "b", num_workers=1, progress=False)
    assert s["skipped_total"] == 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["skipped_total"] == 1
