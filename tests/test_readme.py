"""The README is a user's first contact: its set-up commands stay the ones CI and tools call,
every `ume ...` command it shows parses with the real command line, and every `ume.` call of
its Python snippet names a function that takes those keywords. Fast: nothing runs."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP = [
    "bash scripts/setup.sh && .venv/bin/ume demo --preset quick --workdir work",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _commands() -> list[str]:
    """Every `ume ...` command of the README's bash blocks (continuation lines joined, pipes
    and `&&` split, `.venv/bin/ume` read as `ume`)."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\|\||&&|\|", line):
                words = shlex.split(part, comments=True)
                if words and words[0] in ("ume", ".venv/bin/ume"):
                    out.append(shlex.join(words))
    return out


def test_the_setup_commands_come_first_and_unchanged() -> None:
    first = _blocks("bash")[0]
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == SETUP


def test_the_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


@pytest.mark.parametrize("command", _commands())
def test_every_readme_command_parses(command: str) -> None:
    from ume.cli import build_parser

    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse reports the bad flag on stderr
        raise AssertionError(f"README command does not parse: {command}") from e
    assert callable(args.func)


def test_the_readme_shows_the_main_commands() -> None:
    verbs = {c.split()[1] for c in _commands()}
    assert {"transcribe", "import", "upcycle", "train", "decode", "score", "export"} <= verbs
    assert {"demo", "experiment"} <= verbs


def test_the_python_snippet_calls_real_functions() -> None:
    import ume

    (snippet,) = _blocks("python")
    calls = [
        n
        for n in ast.walk(ast.parse(snippet))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "ume"
    ]
    assert {c.func.attr for c in calls} >= {"upcycle", "freeze", "aux_loss", "save"}
    for call in calls:
        sig = inspect.signature(getattr(ume, call.func.attr))
        sig.bind(*call.args, **{k.arg: k.value for k in call.keywords})  # TypeError if wrong
