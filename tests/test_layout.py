"""The package's architecture as a test: every `ume` module sits on a floor, imports (top-level
and lazy, function-level ones alike) only go to its own floor or below, no module imports itself
back through a circle, and no module shadows a standard-library module.

Parsed with `ast`, nothing is imported, so this test is fast and needs no torch.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ume"

# Lowest floor first. A module's floor is that of its longest matching prefix ("ume" itself only
# names the package's __init__, so a new top-level module must be placed here explicitly). A
# module may import modules of its own floor or lower floors, never higher ones; no circles.
FLOORS: list[tuple[str, ...]] = [
    # leaves: configs, atomic files, host facts, devices, bundled models
    ("ume.errors", "ume.config", "ume.atomic", "ume.machine", "ume.device", "ume.bundled"),
    ("ume.data",),  # text, corpus, audio, features, tokenizer, batches
    ("ume.model",),  # networks: conformer, decoder, FFN/MoE layers, parameter counts
    ("ume.expdir",),  # experiment dirs: config + tokenizer + weights on disk
    ("ume.interop",),  # checkpoints to and from other toolkits (WeNet)
    ("ume.decode",),  # search, scoring, significance, export
    ("ume.moe_report",),  # diagnostics: expert load, balance, similarity
    ("ume.upcycle",),  # dense -> MoE, for ume's own models and any PyTorch model
    ("ume.api",),  # the Python API: upcycle, aux_loss, freeze, save/load (uses ume.upcycle)
    ("ume.train",),  # trainer, schedule, checkpoints
    ("ume.bench",),  # measurements only
    ("ume.experiment",),  # the paper's comparison, results tables, demo
    # the only rooms that know everyone: the command line, and ume/__init__.py, the public
    # Python facade (`import ume; ume.upcycle(...)`), which no module inside ume/ may import
    ("ume.cli", "ume"),
]


def floor_of(module: str) -> int:
    best, floor = -1, None
    for i, prefixes in enumerate(FLOORS):
        for p in prefixes:
            inside = p != "ume" and module.startswith(p + ".")
            if (module == p or inside) and len(p) > best:
                best, floor = len(p), i
    if floor is None:
        raise AssertionError(f"{module} has no floor: add it to FLOORS in {__file__}")
    return floor


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """`ume` modules that `module` imports anywhere in its file (top-level or lazy)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            # `from ume.decode import score` imports the module ume.decode.score
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
        else:
            continue
        for name in names:
            if name == "ume" or name.startswith("ume."):
                while name not in known and "." in name:  # `import ume.x.y` of a function
                    name = name.rsplit(".", 1)[0]
                if name != module:
                    out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    color: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        color[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if color.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in color and (c := visit(n)) is not None:
                return c
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if m not in color and (c := visit(m)) is not None:
            return c
    return None


def test_every_module_has_a_floor() -> None:
    for m in all_modules():
        floor_of(m)


def test_no_upward_imports() -> None:
    bad = [
        f"{m} (floor {floor_of(m)}) imports {n} (floor {floor_of(n)})"
        for m, deps in import_graph().items()
        for n in sorted(deps)
        if floor_of(n) > floor_of(m)
    ]
    assert not bad, "imports from a higher floor:\n" + "\n".join(bad)


def test_upcycle_package_does_not_forward_up_to_the_api() -> None:
    """ume.api builds on ume.upcycle, so the package's callable form must call down into its
    own module: were the two on one floor, a lazy `from ume.api import ...` inside ume.upcycle
    would pass test_no_upward_imports."""
    assert floor_of("ume.moe_report") < floor_of("ume.upcycle") < floor_of("ume.api")
    deps = import_graph()
    assert not {n for m, ds in deps.items() if m.startswith("ume.upcycle") for n in ds} & {
        "ume.api"
    }


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_shadows_the_standard_library() -> None:
    bad = [
        f"{p.relative_to(ROOT)} ({part!r})"
        for p in PKG.rglob("*.py")
        for part in p.relative_to(PKG).with_suffix("").parts
        if part in sys.stdlib_module_names
    ]
    assert not bad, "modules named like standard-library modules: " + ", ".join(bad)


@pytest.mark.parametrize(
    ("graph", "expect"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_cycle_finder_finds_circles(graph: dict[str, set[str]], expect: list[str] | None) -> None:
    assert find_cycle(graph) == expect


def test_parser_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text(
        "from . import b\nfrom .c import x\ndef g():\n    from ume.d import y\n    import ume.e\n"
    )
    known = {"ume.pkg.mod", "ume.pkg.b", "ume.pkg.c", "ume.d", "ume.e", "ume.pkg"}
    assert imports_of("ume.pkg.mod", f, known) == {"ume.pkg.b", "ume.pkg.c", "ume.d", "ume.e"}
    assert floor_of("ume.model.moe") < floor_of("ume.decode.search") < floor_of("ume.cli")
