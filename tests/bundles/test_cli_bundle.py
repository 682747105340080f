"""`calibseg bundle create|list` and one-line errors through the CLI."""

import os
import sys

from typer.testing import CliRunner

from calibseg.cli.app import app
from calibseg.cli.common import run_app


def _run_app(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["calibseg", *args])
    rc = run_app(app)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_create_then_reuse_then_list(tmp_path, synth_root, monkeypatch):
    from calibseg.cli import common

    monkeypatch.setattr(common.console, "width", 250)
    out = str(tmp_path / "b")
    args = ["bundle", "create", "--data", "synthetic", "--loss", "softl1ace_dice"]
    args += ["--out", out, "--data-root", synth_root]
    res = CliRunner().invoke(app, args, terminal_width=250)
    assert res.exit_code == 0, res.output
    (name,) = os.listdir(out)
    assert "created bundle" in res.output and name in res.output
    res = CliRunner().invoke(app, args, terminal_width=250)
    assert res.exit_code == 0 and "already exists" in res.output
    assert os.listdir(out) == [name]
    res = CliRunner().invoke(app, ["bundle", "list", "--root", out], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert name in res.output and "softl1ace_dice" in res.output and "synthetic" in res.output


def test_one_line_errors(tmp_path, synth_root, monkeypatch, capsys):
    rc, _, err = _run_app(
        monkeypatch, capsys, "bundle", "create", "--data", "synthetic", "--loss", "l2",
        "--out", str(tmp_path), "--data-root", synth_root,
    )  # fmt: skip
    assert rc == 1 and err.count("\n") == 1
    assert "unknown loss 'l2'" in err and "hardl1ace_dice_ce" in err
    rc, _, err = _run_app(
        monkeypatch, capsys, "bundle", "create", "--data", "cifar", "--loss", "baseline_ce"
    )
    assert rc == 1 and err.count("\n") == 1 and "unknown dataset 'cifar'" in err and "kits23" in err
    monkeypatch.delenv("CALIBSEG_DATA_SYNTHETIC", raising=False)
    rc, _, err = _run_app(
        monkeypatch, capsys, "bundle", "create", "--data", "synthetic", "--loss", "baseline_ce"
    )
    assert rc == 1 and err.count("\n") == 1 and "--data-root" in err
    for cmd in ("train", "predict"):
        rc, _, err = _run_app(monkeypatch, capsys, cmd, str(tmp_path / "missing_bundle"))
        assert rc == 1 and err.count("\n") == 1 and "no bundle at" in err, err
    rc, _, err = _run_app(monkeypatch, capsys, "bundle", "list", "--root", str(tmp_path / "none"))
    assert rc == 1 and "no bundle folder" in err
