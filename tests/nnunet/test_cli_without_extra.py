"""`calibseg nnunet …` without nnU-Net installed: one line naming the install command."""

import os
import subprocess
import sys

from typer.testing import CliRunner

import calibseg.nnunet as nn_pkg
from calibseg.cli.app import app
from calibseg.nnunet import INSTALL_HINT

HIDE = "import sys; sys.modules['nnunetv2'] = None; from calibseg.cli.app import main; "


def test_missing_extra_in_process(monkeypatch):
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: False)
    res = CliRunner().invoke(app, ["nnunet", "train", "501", "3d_fullres", "0"])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert INSTALL_HINT in text


def test_missing_extra_subprocess_one_line(tmp_path):
    code = HIDE + "sys.argv = ['calibseg', 'nnunet', 'convert', 'x', '--id', '5']; main()"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'calibseg[nnunet]'" in lines[0]  # brackets kept
    assert res.stdout == ""


def test_help_lists_the_commands_through_the_console_script():
    exe = os.path.join(os.path.dirname(sys.executable), "calibseg")
    res = subprocess.run([exe, "nnunet", "--help"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0
    for cmd in ("convert", "train", "predict", "ensemble", "trainer-path"):
        assert cmd in res.stdout
