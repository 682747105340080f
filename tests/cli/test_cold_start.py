"""``calibseg --help`` stays fast: building the command line imports none of the heavy
libraries (each command imports what it needs when it runs)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "monai", "numba", "dask", "distributed", "pandas", "matplotlib", "nibabel")


def test_building_the_cli_imports_no_heavy_library() -> None:
    code = (
        f"import sys, calibseg.cli.app\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
