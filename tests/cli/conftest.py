"""Helpers to run the installed ``calibseg`` console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")


def run_cli(*args: str, env: dict | None = None, cwd=None, timeout: float = 600):
    """Run ``calibseg ARGS`` with the current environment (plus ``env``); CompletedProcess."""
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [CALIBSEG, *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    """``cli(*args, env=…)`` runs the console script and returns the CompletedProcess."""
    assert os.path.exists(CALIBSEG), f"console script not installed at {CALIBSEG}"
    return run_cli
