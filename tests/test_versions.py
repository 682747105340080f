"""Dependency floors are true for the APIs the code uses; constraints.txt is the tested set."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, tuple[int, ...]]:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.match(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([\d.]+)", d)
        if m:
            out[m.group(1).split("[")[0].lower()] = tuple(int(x) for x in m.group(2).split("."))
    return out


def _source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))


def test_floors_cover_the_apis_used():
    floors, src = _floors(), _source()
    # API → (distribution, first version that has it), from the projects' release notes
    needs = {
        "np.trapezoid(": ("numpy", (2, 0)),
        "torch.amp.GradScaler(": ("torch", (2, 3)),
    }
    for api, (dist, first) in needs.items():
        if api in src:
            assert floors[dist] >= first, f"{api} needs {dist}>={'.'.join(map(str, first))}"


def test_constraints_pin_the_installed_versions():
    path = ROOT / "constraints.txt"
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for dist in ("torch", "numpy", "monai", "typer", "rich", "s3fs", "fsspec", "moto"):
        assert dist in pins, dist
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is pinned in constraints.txt but not installed")
        assert installed.split("+")[0] == version, (name, installed, version)
