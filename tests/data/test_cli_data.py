"""`calibseg data synth|prepare` through the typer app."""

from __future__ import annotations

import json
import os

import numpy as np
from typer.testing import CliRunner

from calibseg.cli.app import app

runner = CliRunner()


def test_synth_then_prepare(tmp_path):
    out = tmp_path / "synth"
    r = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--cases",
            "5",
            "--raters",
            "2",
            "--shape",
            "16,16,8",
            "--seed",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "labelsTr" / "synth_004_rater2.nii.gz").exists()
    dl = tmp_path / "dl.json"
    r = runner.invoke(
        app, ["data", "prepare", "synthetic", "--data-root", str(out), "--out", str(dl)]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(dl.read_text())
    assert data["dataset"] == "synthetic" and data["num_cases"] == 5
    assert data["class_names"] == ["background", "organ", "vessel", "lesion"]
    assert sorted(sum(data["splits"].values(), [])) == [f"synth_{i:03d}" for i in range(5)]
    assert data["items"][0]["raters"][1] == str(out / "labelsTr" / "synth_000_rater2.nii.gz")


def test_prepare_reports_problems_and_writes_nothing(tmp_path, nii, monkeypatch):
    base = tmp_path / "kits" / "dataset"
    nii(str(base / "case_00000" / "imaging.nii.gz"), np.zeros((4, 4, 4), np.float32))
    nii(str(base / "case_00001" / "imaging.nii.gz"), np.zeros((4, 4, 4), np.float32))
    nii(str(base / "case_00001" / "segmentation.nii.gz"), np.zeros((4, 4, 4), np.uint8))
    monkeypatch.setenv("CALIBSEG_DATA_KITS23", str(tmp_path / "kits"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["data", "prepare", "kits23"])
    assert r.exit_code == 1
    assert "case_00000" in r.output and "missing label file" in r.output
    assert "case_00001" not in r.output
    assert not os.path.exists(tmp_path / "datalist.json")


def test_prepare_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CALIBSEG_DATA_ACDC17", raising=False)
    r = runner.invoke(app, ["data", "prepare", "nope", "--data-root", str(tmp_path)])
    assert r.exit_code != 0 and "acdc17, amos22, brats21, kits23, synthetic" in str(r.exception)
    r = runner.invoke(app, ["data", "prepare", "acdc17"])
    assert r.exit_code != 0 and "CALIBSEG_DATA_ACDC17" in str(r.exception)
    assert "--data-root" in str(r.exception)
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--shape", "16,16"])
    assert r.exit_code != 0 and "--shape" in str(r.exception)
