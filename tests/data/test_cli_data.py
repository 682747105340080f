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
    assert r.exit_code != 0 and "acdc17, amos22, brats21, curvas, kits23, synthetic" in str(
        r.exception
    )
    r = runner.invoke(app, ["data", "prepare", "acdc17"])
    assert r.exit_code != 0 and "CALIBSEG_DATA_ACDC17" in str(r.exception)
    assert "--data-root" in str(r.exception)
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--shape", "16,16"])
    assert r.exit_code != 0 and "--shape" in str(r.exception)


def test_prepare_acdc_archive_root_and_database_folder(tmp_path, acdc_root):
    # the official archive unpacks as ACDC/database/{training,testing}
    archive = tmp_path / "archive" / "ACDC"
    archive.mkdir(parents=True)
    os.rename(acdc_root, archive / "database")
    for root in (archive, archive / "database"):
        dl = tmp_path / "acdc.json"
        r = runner.invoke(
            app, ["data", "prepare", "acdc17", "--data-root", str(root), "--out", str(dl)]
        )
        assert r.exit_code == 0, r.output
        assert json.loads(dl.read_text())["num_cases"] == 6


def test_prepare_multirater_reports_missing_rater_and_truncated_file(tmp_path, nii, labvol):
    root = tmp_path / "curvas"
    for case in ("A", "B", "C"):
        nii(str(root / case / "image.nii.gz"), np.random.default_rng(0).random((8, 8, 4)))
        for r in (1, 2, 3):
            nii(str(root / case / f"annotation_{r}.nii.gz"), labvol(r))
    dl = tmp_path / "curvas.json"
    args = ["data", "prepare", "curvas", "--data-root", str(root), "--out", str(dl)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    data = json.loads(dl.read_text())
    assert data["num_cases"] == 3 and data["class_names"][0] == "background"
    assert [os.path.basename(p) for p in data["items"][2]["raters"]] == [
        "annotation_1.nii.gz",
        "annotation_2.nii.gz",
        "annotation_3.nii.gz",
    ]
    dl.unlink()
    os.remove(root / "B" / "annotation_2.nii.gz")
    img = root / "C" / "image.nii.gz"
    img.write_bytes(img.read_bytes()[:-40])  # cut short, header intact
    r = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 1
    assert "missing rater 2 label file" in r.output and "truncated" in r.output
    assert not dl.exists()


def test_prepare_curvas_console_script_exits_1_on_a_missing_rater(tmp_path, nii, labvol):
    import subprocess
    import sys

    root = tmp_path / "curvas"
    for case in ("A", "B"):
        nii(str(root / case / "image.nii.gz"), np.zeros((8, 8, 4), np.float32))
        for r in (1, 2, 3):
            if (case, r) != ("B", 2):
                nii(str(root / case / f"annotation_{r}.nii.gz"), labvol(r))
    exe = os.path.join(os.path.dirname(sys.executable), "calibseg")
    dl = tmp_path / "dl.json"
    res = subprocess.run(
        [exe, "data", "prepare", "curvas", "--data-root", str(root), "--out", str(dl)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
        timeout=600,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "missing rater 2 label file" in res.stdout
    assert not dl.exists()
