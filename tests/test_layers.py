"""Layering of the package (docs: DESIGN.md "Layout"): a module imports only from its own layer
or below. Every import is read with ``ast`` — module level and inside functions alike, since an
import placed in a function to dodge a cycle is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "calibseg"

# bottom up; a top-level module or package of calibseg belongs to exactly one layer
LAYERS = [
    {"storage", "storage_config", "storage_mirror", "distributed"},
    {"binning", "_kernels"},
    {"losses", "metrics", "posthoc"},
    {"handlers", "visualize"},
    {"data", "transforms"},
    {"bundles", "ensemble", "nnunet"},
    {"evaluate"},
    {"cli", "__main__"},
]
# Imports allowed against the layer order (none today; an entry needs a reason beside it).
KNOWN: set[tuple[str, str]] = set()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "calibseg" or len(parts) == 1:
        return None
    for i, group in enumerate(LAYERS):
        if parts[1] in group:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (DESIGN.md order).")


def _module_name(path: Path) -> tuple[str, str]:
    """(module, package the module's relative imports start from)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every ``calibseg`` module imported anywhere in the file (absolute names, line numbers);
    ``from calibseg import x`` counts as an import of ``calibseg.x``."""
    _, package = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "calibseg":
                found += [(f"calibseg.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((mod, node.lineno))
    return [(m, line) for m, line in found if m.split(".")[0] == "calibseg"]


def _violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module, _ = _module_name(path)
        mine = _layer(module)
        if mine is None:
            continue
        for target, line in imported_modules(path):
            theirs = _layer(target)
            if theirs is None or theirs <= mine:
                continue
            if (module, target) in KNOWN:
                continue
            out.append(f"{module}:{line} imports {target} (layer {theirs} > {mine})")
    return out


def test_no_module_imports_a_higher_layer():
    assert _violations() == []


def test_known_exceptions_still_exist():
    """An exception whose import is gone must be deleted from KNOWN (so it cannot hide a new one)."""
    present = set()
    for path in SRC.rglob("*.py"):
        module, _ = _module_name(path)
        present |= {(module, t) for t, _ in imported_modules(path)}
    assert KNOWN <= present, sorted(KNOWN - present)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import calibseg.cli.app\n", ["calibseg.cli.app"]),
        ("def f():\n    from calibseg import visualize\n", ["calibseg.visualize"]),
        ("def f():\n    from ..evaluate import pipeline\n", ["calibseg.evaluate"]),
        ("from . import figures\n", ["calibseg.metrics"]),
        ("import numpy\n", []),
    ],
)
def test_the_scan_sees_every_form_of_import(tmp_path, source, expected):
    """The checker itself: top-level, function-level, relative and ``from calibseg import``."""
    global SRC
    old = SRC
    SRC = tmp_path / "calibseg"
    try:
        fake = SRC / "metrics" / "mod.py"
        fake.parent.mkdir(parents=True)
        fake.write_text(source)
        assert [m for m, _ in imported_modules(fake)] == expected
    finally:
        SRC = old


def test_a_higher_import_is_reported(tmp_path):
    """A metrics module importing visualize inside a function is a violation."""
    global SRC
    old = SRC
    SRC = tmp_path / "calibseg"
    try:
        (SRC / "metrics").mkdir(parents=True)
        (SRC / "metrics" / "m.py").write_text("def f():\n    from calibseg import visualize\n")
        assert _violations() == ["calibseg.metrics.m:2 imports calibseg.visualize (layer 3 > 2)"]
    finally:
        SRC = old
