"""Shared helpers of the nnU-Net tests."""

import os
import subprocess
import sys

import pytest

EXE = os.path.join(os.path.dirname(sys.executable), "calibseg")


@pytest.fixture
def error_line():
    """Run the installed ``calibseg`` console script with ``args`` in ``cwd``; assert exit code
    1 with exactly one non-empty stderr line and return that line."""

    def run(args: list[str], cwd) -> str:
        res = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stderr
        return lines[0]

    return run
