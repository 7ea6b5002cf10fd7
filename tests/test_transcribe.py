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
    assert ume.bundled_model("dense_paper") == BUNDLED.resolve()
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
    samples = (soxr.resample(data, sr, 8000) * 32767).astype("<i2")
    pcm.write_bytes(samples.tobytes())
    pcm_wav = d / "c.wav"  # the same samples as a WAV file
    sf.write(pcm_wav, samples, 8000, subtype="PCM_16")
    return {"wav": wav, "flac": flac, "pcm": pcm, "pcm_wav": pcm_wav}


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
    # Python twin (both use the default model, ume.bundled_model())
    assert ume.transcribe(ume.bundled_model(), wavs["wav"], mode="ctc_greedy") == text
    # --json: per-token CTC times, in order, inside the audio
    assert main(["transcribe", "--mode", "ctc_greedy", "--json", str(wavs["wav"])]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["mode"] == "ctc_greedy" and obj["text"] == text and obj["tokens"]
    ends = [t["end"] for t in obj["tokens"]]
    assert all(t["start"] < t["end"] for t in obj["tokens"]) and ends == sorted(ends)
    assert ends[-1] <= sf.info(wavs["wav"]).duration + 0.1


@needs_model
def test_transcribe_stdin_pcm(wavs, monkeypatch, capsys) -> None:
    """PCM on stdin gives the text of the same samples read from a WAV file."""
    raw = wavs["pcm"].read_bytes()
    for stream in ([], ["--stream", "--chunk-size", "8"]):
        args = ["transcribe", "--mode", "ctc_greedy", *stream]
        assert main([*args, str(wavs["pcm_wav"])]) == 0
        want = capsys.readouterr().out.split("\t", 1)[1]
        assert want.strip(), stream  # the file has a transcript to compare with
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
        assert main([*args, "--rate", "8000", "-"]) == 0
        assert capsys.readouterr().out == f"-\t{want}", stream


@needs_model
def test_transcribe_arrays_as_torchaudio_and_soundfile_give_them(wavs) -> None:
    """(C, N) as torchaudio.load returns, (N, C) as soundfile.read does, int16 PCM: the text of
    the file itself."""
    import torch

    want = ume.transcribe(BUNDLED, wavs["flac"], mode="ctc_greedy")
    assert want
    data, sr = sf.read(wavs["flac"], dtype="float32")  # (N, 2) at 44.1 kHz
    as_torchaudio = torch.from_numpy(data.T.copy())  # (2, N)
    for arr in (data, as_torchaudio, as_torchaudio[:1], (data * 32767).astype(np.int16)):
        got = ume.transcribe(BUNDLED, arr, mode="ctc_greedy", sample_rate=sr)
        assert got == want, (type(arr), arr.shape, arr.dtype)
    with pytest.raises(ValueError, match="ambiguous"):
        ume.transcribe(BUNDLED, np.zeros((4, 4), np.float32), mode="ctc_greedy")


def _utterances(d: Path, texts: list[str]) -> list[np.ndarray]:
    out = []
    for i, text in enumerate(texts):
        wav = d / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        out.append(ume.data.manifest.load_audio(str(wav)))
    return out


@needs_model
def test_long_audio_is_segmented_with_times(wavs, tmp_path: Path, capsys) -> None:
    """A recording longer than --max-segment is cut at its pauses: bounded segments, one per
    utterance here, decoded one by one, with times in the whole recording."""
    from ume.decode.transcribe import Recognizer, transcribe_pieces

    texts = ["hello world", "good morning everyone", "the weather is nice today"]
    utts = _utterances(tmp_path, texts)
    gap = np.zeros(8000, np.float32)  # 0.5 s pauses
    wave = np.concatenate([gap, *[np.concatenate([u, gap]) for u in utts]])
    spans, pos = [], len(gap)
    for u in utts:
        spans.append((pos / 16000, (pos + len(u)) / 16000))
        pos += len(u) + len(gap)
    path = tmp_path / "long.wav"
    sf.write(path, wave, 16000)
    rec = Recognizer.load(BUNDLED)
    res = transcribe_pieces(rec, [wave], "ctc_greedy", times=True, max_segment=3.0)
    segs = res["segments"]
    assert len(segs) == len(utts)
    for s, (a, b) in zip(segs, spans):
        assert s["end"] - s["start"] <= 3.0
        assert s["start"] <= a + 0.05 and s["end"] >= b - 0.3  # espeak ends in silence
        assert s["text"] and all(s["start"] <= t["start"] < t["end"] <= s["end"] + 0.1
                                 for t in s["tokens"])  # fmt: skip
    assert res["text"] == rec.tokenizer.decode([t for s in segs for t in s["ids"]])
    # the CLI: one line per file; --json adds the segments
    cli = ["transcribe", "--model", str(BUNDLED), "--mode", "ctc_greedy", "--max-segment"]
    assert main([*cli, "3", "--json", str(path)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["text"] == res["text"]
    assert [(s["start"], s["end"]) for s in obj["segments"]] == [
        (s["start"], s["end"]) for s in segs
    ]
    assert [t["start"] for t in obj["tokens"]] == sorted(t["start"] for t in obj["tokens"])
    # the Python twin with times
    got = ume.transcribe_segments(BUNDLED, path, mode="ctc_greedy", max_segment=3.0)
    assert [s["text"] for s in got] == [s["text"] for s in segs]
    # up to --max-segment the file is decoded whole, as before
    assert main([*cli, "0", str(path)]) == 0
    whole = capsys.readouterr().out.split("\t", 1)[1].strip()
    from ume.decode.transcribe import transcribe_wave

    assert whole == transcribe_wave(rec, wave, "ctc_greedy")["text"]


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
    model = str(ume.bundled_model())  # the default recogniser, as a user would deploy it
    assert main(["export", "--model", model, "--out", str(out)]) == 0
    for f in ("encoder_stream.onnx", "tokens.json", "units.txt", "features.json", "cmvn.json"):
        assert (out.parent / f).is_file(), f
    capsys.readouterr()
    example = ROOT / "examples" / "onnx_transcribe.py"
    env = {**os.environ, "PYTHONPATH": ""}
    wavs_in = (wavs["wav"], wavs["flac"])
    for stream in ([], ["--stream"]):
        cmd = ["transcribe", "--model", model, "--mode", "ctc_greedy", *map(str, wavs_in)]
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


@needs_model
def test_stream_ends_utterances_at_pauses(wavs, tmp_path: Path, capsys) -> None:
    """--stream (bounded by default): each utterance after a pause is its own output line,
    with its times in the stream under --json."""

    texts = ["hello world", "good morning everyone", "the weather is nice today"]
    utts = _utterances(tmp_path, texts)
    gap = np.zeros(32000, np.float32)  # 2 s pauses
    path = tmp_path / "three.wav"
    sf.write(path, np.concatenate([x for u in utts for x in (u, gap)]), 16000)
    args = ["transcribe", "--mode", "ctc_greedy", "--stream", "--chunk-size", "16", "--json"]
    assert main([*args, str(path)]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(objs) == len(utts) and all(o["text"] for o in objs)
    pos = 0.0
    for o, u in zip(objs, utts):
        assert o["start"] <= pos + 0.1 and o["end"] >= pos + len(u) / 16000 - 0.5, (o, pos)
        assert all(o["start"] <= t["start"] < t["end"] <= o["end"] + 0.1 for t in o["tokens"])
        pos += (len(u) + len(gap)) / 16000
    # endpointing off: the whole stream is one utterance, one line
    assert main([*args, "--endpoint-silence", "0", "--max-utterance", "0", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
