"""The `ume` parser: building it (and `ume --help`) imports no torch; every subcommand's
arguments still load when that subcommand is parsed or its help is printed."""

from __future__ import annotations

import argparse
import subprocess
import sys

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
