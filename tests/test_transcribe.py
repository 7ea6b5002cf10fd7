"""`ume transcribe` (files, stdin, --json, errors), `ume.transcribe`, clear errors for model
files that are not what their names say, the ONNX deploy example, and `pip install .`."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import ume
from ume.cli import main
from ume.decode.transcribe import ctc_alignment

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "ume" / "models" / "dense_paper"
needs_model = pytest.mark.skipif(
    not (BUNDLED / "model.safetensors").is_file(), reason="no bundled model"
)


def test_ctc_alignment_hand_built() -> None:
    # frames: blank, a, a, blank, b, b  -> a at [1, 3), b at [4, 6)
    path = [0, 1, 1, 0, 2, 2]
    lp = np.full((6, 3), -10.0)
    lp[np.arange(6), path] = -0.01
    assert ctc_alignment(lp, [1, 2]) == [(1, 3), (4, 6)]
    assert ctc_alignment(lp, [1, 1]) is not None  # a blank must separate the repeat
    assert ctc_alignment(lp[:1], [1, 2]) is None  # two tokens cannot fit one frame
    assert ctc_alignment(lp, []) == []


def test_bundled_model_found() -> None:
    assert ume.bundled_model() == BUNDLED.resolve()
    with pytest.raises(FileNotFoundError, match="available"):
        ume.bundled_model("no_such_model")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt) to synthesise test speech")
    d = tmp_path_factory.mktemp("wavs")
    wav = d / "a.wav"  # espeak-ng writes 22.05 kHz: resampled on reading
    subprocess.run(["espeak-ng", "-w", str(wav), "hello world"], check=True)
    data, sr = sf.read(wav, dtype="float32")
    flac = d / "b.flac"  # stereo FLAC at 44.1 kHz: downmixed and resampled
    import soxr

    st = soxr.resample(data, sr, 44100)
    sf.write(flac, np.stack([st, st], axis=1), 44100)
    pcm = d / "c.pcm"  # raw s16le mono at 8 kHz for stdin
    pcm.write_bytes((soxr.resample(data, sr, 8000) * 32767).astype("<i2").tobytes())
    return {"wav": wav, "flac": flac, "pcm": pcm}


@needs_model
def test_transcribe_files_errors_and_json(wavs, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.wav"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    args = ["transcribe", "--mode", "ctc_greedy", str(wavs["wav"]), str(missing), str(bad)]
    assert main([*args, str(wavs["flac"])]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [x.split("\t")[0] for x in lines] == [str(wavs["wav"]), str(wavs["flac"])]
    text = lines[0].split("\t")[1]
    assert text and lines[1].split("\t")[1] == text  # same speech, other format/rate/channels
    errs = out.err.strip().splitlines()
    assert len(errs) == 2 and str(missing) in errs[0] and str(bad) in errs[1]
    assert "Traceback" not in out.err
    # Python twin
    assert ume.transcribe(BUNDLED, wavs["wav"], mode="ctc_greedy") == text
    # --json: per-token CTC times, in order, inside the audio
    assert main(["transcribe", "--mode", "ctc_greedy", "--json", str(wavs["wav"])]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["mode"] == "ctc_greedy" and obj["text"] == text and obj["tokens"]
    ends = [t["end"] for t in obj["tokens"]]
    assert all(t["start"] < t["end"] for t in obj["tokens"]) and ends == sorted(ends)
    assert ends[-1] <= sf.info(wavs["wav"]).duration + 0.1


@needs_model
def test_transcribe_stdin_pcm(wavs, monkeypatch, capsys) -> None:
    raw = wavs["pcm"].read_bytes()
    for stream in ([], ["--stream", "--chunk-size", "8"]):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        assert main(["transcribe", "--mode", "ctc_greedy", "--rate", "8000", *stream, "-"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("-\t") and len(line) > 3


def _corrupt(src: Path, dst: Path, name: str) -> None:
    shutil.copytree(src, dst)
    target = dst / name
    if name == "model.safetensors":  # a pickle disguised as safetensors
        target.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    elif name == "config.yaml":
        target.write_text("model: {encoder: [unclosed\n")
    elif name == "cmvn.json":
        target.write_text("mean = [0, 1]\n")
    else:
        target.write_bytes(b"\x00\x01garbage")


@needs_model
@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.yaml", "cmvn.json", "tokenizer/tokenizer.json"]
)
def test_mislabelled_model_files_give_one_line(name, wavs, tmp_path: Path, capsys) -> None:
    exp = tmp_path / "exp"
    _corrupt(BUNDLED, exp, name)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(f"u1 {wavs['wav']}\n")
    cmds = [
        ["transcribe", "--model", str(exp), str(wavs["wav"])],
        ["decode", "--model", str(exp), "--data", str(data), "--out", str(tmp_path / "h")],
        ["export", "--model", str(exp), "--out", str(tmp_path / "e.onnx")],
        ["upcycle", "--dense", str(exp), "--experts", "2", "--out", str(tmp_path / "u")],
    ]
    for cmd in cmds:
        assert main(cmd) != 0, cmd
        cap = capsys.readouterr()
        err = (cap.err or cap.out).strip()  # upcycle prints its errors on stdout
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (cmd, err)
        assert str(exp / name) in err, (cmd, err)


@needs_model
@pytest.mark.slow
def test_onnx_example_matches_transcribe(wavs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "deploy" / "encoder.onnx"
    assert main(["export", "--model", str(BUNDLED), "--out", str(out)]) == 0
    for f in ("encoder_stream.onnx", "tokens.json", "units.txt", "features.json", "cmvn.json"):
        assert (out.parent / f).is_file(), f
    capsys.readouterr()
    example = ROOT / "examples" / "onnx_transcribe.py"
    env = {**os.environ, "PYTHONPATH": ""}
    for stream in ([], ["--stream"]):
        cmd = ["transcribe", "--mode", "ctc_greedy", str(wavs["wav"]), str(wavs["flac"])]
        if stream:
            cmd += ["--stream", "--chunk-size", "16"]
        assert main(cmd) == 0
        want = capsys.readouterr().out
        got = subprocess.run(
            [sys.executable, "-I", str(example), str(out), str(wavs["wav"]), str(wavs["flac"])]
            + stream,
            capture_output=True, text=True, check=True, cwd=tmp_path, env=env,
        ).stdout  # fmt: skip
        assert got == want


@needs_model
@pytest.mark.slow
def test_pip_install_outside_source_tree(wavs, tmp_path: Path) -> None:
    """Non-editable install into a fresh venv (dependencies from this venv via a .pth file,
    offline), then `ume transcribe` from a directory outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    import sysconfig

    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "deps.pth").write_text(ours + "\n")
    src = tmp_path / "src"  # build from a copy: an in-tree build writes build/ into ROOT
    shutil.copytree(ROOT / "ume", src / "ume", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheel_dir), str(src)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    wheel = next(wheel_dir.glob("ume-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(py), "-c", "import ume; print(ume.__file__, ume.bundled_model())"],
        capture_output=True, text=True, check=True, cwd=run, env=env,
    ).stdout  # fmt: skip
    assert str(ROOT) not in where and "site-packages" in where
    res = subprocess.run(
        [str(venv / "bin" / "ume"), "transcribe", "--mode", "ctc_greedy", str(wavs["wav"])],
        capture_output=True, text=True, cwd=run, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{wavs['wav']}\t") and len(res.stdout.strip()) > 5


@needs_model
def test_model_cache_follows_a_retrained_model(wavs, tmp_path: Path) -> None:
    """The cache is keyed on the model files' identity: new weights in the same dir are used."""
    import torch
    from safetensors.torch import load_file, save_file

    exp = tmp_path / "exp"
    shutil.copytree(BUNDLED, exp)
    first = ume.transcribe(exp, wavs["wav"], mode="ctc_greedy")
    assert first
    assert ume.transcribe(exp, wavs["wav"], mode="ctc_greedy") == first
    sd = load_file(exp / "model.safetensors")
    ctc = [k for k in sd if k.startswith("ctc.")]
    assert ctc
    for k in ctc:  # "retrained": a CTC head that emits only blanks
        sd[k] = torch.zeros_like(sd[k])
    sd[next(k for k in ctc if k.endswith("bias"))][0] = 1.0  # blank = id 0
    save_file(sd, exp / "model.safetensors.tmp")
    os.replace(exp / "model.safetensors.tmp", exp / "model.safetensors")
    assert ume.transcribe(exp, wavs["wav"], mode="ctc_greedy") == ""
