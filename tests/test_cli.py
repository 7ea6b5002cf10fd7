"""The `ume` parser: building it (and `ume --help`) imports no torch; every subcommand's
arguments still load when that subcommand is parsed or its help is printed."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from ume.cli import build_parser


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_leaves(sub, (*path, name)))
    return out or [(path, parser)]


def test_help_imports_no_torch() -> None:
    code = (
        "import sys, ume.cli\n"
        "ap = ume.cli.build_parser()\n"
        "ap.format_help()\n"
        "try:\n"
        "    ap.parse_args(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "upcycle" in r.stdout and "experiment" in r.stdout  # the help was printed


def test_every_subcommand_loads_its_arguments() -> None:
    leaves = _leaves(build_parser())
    names = {" ".join(p) for p, _ in leaves}
    assert {"upcycle", "inspect", "export", "bench moe", "bench gap", "experiment"} <= names
    for path, parser in leaves:
        text = parser.format_help()  # imports the module that defines the arguments
        assert text.startswith("usage: ume " + " ".join(path)), text[:80]
        assert parser.get_default("func") is not None, f"ume {' '.join(path)} has no handler"


def test_lazy_subcommand_parses_its_own_options() -> None:
    args = build_parser().parse_args(["bench", "compile", "--model", "a", "--model", "b"])
    assert args.model == ["a", "b"] and args.frames == 300
    args = build_parser().parse_args(["inspect", "runs/moe", "--max-utts", "7"])
    assert (args.expdir, args.max_utts) == ("runs/moe", 7)


def test_upcycle_error_goes_to_stderr(tmp_path, capsys) -> None:
    from ume.cli import main

    code = main(["upcycle", "--dense", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "ume upcycle: error:" in err and "missing" in err
    assert "error" not in out


def test_only_ume_errors_are_one_liners(monkeypatch, capsys) -> None:
    """A user error (UmeError and its subclasses) is one line; a ValueError from anywhere else
    (a torch or numpy bug) keeps its traceback."""
    from ume.cli import main
    from ume.data.manifest import DataError
    from ume.decode import score
    from ume.errors import UmeError

    def fail(exc: Exception):
        def run(*args, **kwargs):
            raise exc

        return run

    argv = ["score", "--ref", "r", "--hyp", "h"]
    monkeypatch.setattr(score, "main_score", fail(DataError("r:3: bad line; fix it")))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "ume score: error: r:3: bad line; fix it\n"
    monkeypatch.setattr(score, "main_score", fail(ValueError("operands could not be broadcast")))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "operands could not be broadcast" in err
    monkeypatch.setattr(score, "main_score", fail(RuntimeError("a kernel failed")))
    with pytest.raises(RuntimeError, match="a kernel failed"):
        main(argv)
    # ume's named errors are UmeErrors, and still ValueErrors for callers that catch those
    from ume.config import ConfigError
    from ume.device import DeviceError
    from ume.expdir import ExpDirError
    from ume.interop.wenet_config import WeNetError
    from ume.upcycle.any_model import UpcycleAnyError
    from ume.upcycle.convert import UpcycleError

    for cls in (DataError, ConfigError, DeviceError, ExpDirError, WeNetError, UpcycleError,
                UpcycleAnyError):  # fmt: skip
        assert issubclass(cls, UmeError) and issubclass(cls, ValueError), cls


def test_decode_of_an_audio_file_points_to_transcribe(tmp_path, monkeypatch, capsys) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    from ume.cli import main
    from ume.data.manifest import DataError, load_manifest

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    flac = tmp_path / "b.flac"
    sf.write(flac, np.zeros(1600, np.float32), 16000)
    for path, kind in ((wav, "WAV"), (flac, "FLAC")):
        with pytest.raises(DataError, match=f"is an audio file \\({kind}\\)") as e:
            load_manifest(path)
        assert f"ume transcribe {path}" in str(e.value) and "UTF-8" not in str(e.value)
    with pytest.raises(DataError, match=f"ume transcribe {tmp_path}/\\*.wav"):
        load_manifest(tmp_path)  # a directory of audio files, no wav.scp
    argv = ["decode", "--model", "unused", "--data", str(wav), "--out", str(tmp_path / "h")]
    monkeypatch.setattr(
        "ume.decode.cli.load_experiment", lambda _: (None, None, torch.nn.Linear(1, 1))
    )
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "audio file (WAV)" in err and "ume transcribe" in err
