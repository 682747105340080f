import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibseg.cli.app import app
from calibseg.ensemble.io import load_rater_items
from calibseg.evaluate.multirater_table import COLUMNS, compute_metrics_table

runner = CliRunner()


def _curvas_layout(items: list[dict], root):
    """The rater items linked into the CURVAS layout: <case>/image.nii.gz, annotation_<k>.nii.gz."""
    for it in items:
        d = root / it["case"]
        d.mkdir(parents=True)
        os.symlink(it["image"], d / "image.nii.gz")
        for k, p in enumerate(it["raters"], 1):
            os.symlink(p, d / f"annotation_{k}.nii.gz")
    return root


def test_compute_and_compare_cli(synth_multirater, tmp_path):
    ds, good, poor = synth_multirater
    out = str(tmp_path / "metrics.csv")
    r = runner.invoke(app, ["metrics", "compute", "--pred", good, "--raters", ds, "--out", out])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "metrics",
            "compute",
            "--pred",
            poor,
            "--raters",
            os.path.dirname(ds),
            "--out",
            out,
            "--append",
            "--region",
            "dilated",
        ],
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out, dtype={"case": str, "rater": str})
    assert list(df.columns) == COLUMNS
    assert set(df["model"]) == {"good", "poor"}
    # the table records the region and bins each model was computed with
    settings = df.groupby("model")[["region", "num_bins"]].agg(set)
    assert settings.loc["good"].to_dict() == {"region": {"whole"}, "num_bins": {20}}
    assert settings.loc["poor"].to_dict() == {"region": {"dilated"}, "num_bins": {20}}
    # models computed in different regions are not compared (exit 1, one clear message)
    r = runner.invoke(app, ["metrics", "compare", out, "--a", "poor", "--b", "good"])
    assert r.exit_code != 0 and "different region / num_bins" in str(r.exception)
    assert "region=dilated" in str(r.exception) and "region=whole" in str(r.exception)
    # appending the same model in another region keeps both
    r = runner.invoke(
        app, ["metrics", "compute", "--pred", poor, "--raters", ds, "--out", out, "--append"]
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out, dtype={"case": str, "rater": str})
    assert set(df.loc[df.model == "poor", "region"]) == {"whole", "dilated"}
    assert set(df["class"]) >= {"organ", "vessel", "lesion", "all"}
    per_case = df[(df.metric == "dice") & (df.rater == "1") & (df["class"] == "organ")]
    per_case = per_case[per_case.region == "whole"]
    assert len(per_case) == 6  # 3 cases × 2 models
    summary = pd.read_csv(str(tmp_path / "metrics_summary.csv"))
    row = summary[(summary.model == "good") & (summary.metric == "dice") & (summary.rater == "1")]
    assert len(row) == 1
    assert row["organ"].iloc[0] == pytest.approx(per_case[per_case.model == "good"]["value"].mean())
    assert int(row["n_cases"].iloc[0]) == 3
    assert len(df[(df.case == "ALL") & (df.metric == "aurc_case")]) == 3
    # both are made from rater 1's labels, "good" with a 4× stronger signal: closer to rater 1
    d = per_case.groupby("model")["value"].mean()
    assert d["good"] > d["poor"]
    assert per_case[per_case.model == "good"]["value"].min() > 0.95
    r = runner.invoke(
        app,
        [
            "metrics",
            "compare",
            out,
            "--a",
            "poor",
            "--b",
            "good",
            "--metric",
            "dice",
            "--n-boot",
            "200",
            "--out",
            str(tmp_path / "cmp.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    cmp = pd.read_csv(tmp_path / "cmp.csv")
    assert set(cmp["n_cases"]) == {3}
    assert set(cmp["region"]) == {"whole"} and set(cmp["num_bins"]) == {20}


def test_curvas_layout_and_errors(synth_multirater, tmp_path):
    ds, good, _ = synth_multirater
    items, names = load_rater_items(ds)
    assert names == ["background", "organ", "vessel", "lesion"] and len(items) == 3
    # the same data in the CURVAS layout: <case>/image.nii.gz + annotation_k.nii.gz
    root = _curvas_layout(items, tmp_path / "curvas")
    a = compute_metrics_table(good, str(root), model="m")
    b = compute_metrics_table(good, ds, model="m")
    assert a["value"].to_numpy() == pytest.approx(b["value"].to_numpy(), nan_ok=True)
    body = compute_metrics_table(good, ds, model="m", region="body", body_threshold=0.3)
    assert len(body) == len(b)
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(good, f"{items[0]['case']}_prob.nii.gz"), other / "zz_prob.nii.gz")
    with pytest.raises(ValueError, match="no case in common"):
        compute_metrics_table(str(other), ds)
    r = runner.invoke(
        app, ["metrics", "compute", "--pred", good, "--raters", str(tmp_path / "nope")]
    )
    assert r.exit_code != 0 and isinstance(r.exception, FileNotFoundError)
    lab = nib.load(items[0]["raters"][0])
    bad = tmp_path / "bad"
    bad.mkdir()
    p = np.full((*lab.shape, 2), 0.5, dtype=np.float32)  # 2 channels for 4 classes
    nib.save(nib.Nifti1Image(p, lab.affine), bad / f"{items[0]['case']}_prob.nii.gz")
    with pytest.raises(ValueError, match="2 channels"):
        compute_metrics_table(str(bad), ds)


def test_curvas_missing_rater_is_refused_not_renumbered(synth_multirater, tmp_path):
    ds, good, _ = synth_multirater
    items, _ = load_rater_items(ds)
    root = _curvas_layout(items, tmp_path / "curvas")
    k = len(items[0]["raters"])
    os.remove(root / items[1]["case"] / "annotation_1.nii.gz")
    with pytest.raises(FileNotFoundError, match=f"lacks rater\\(s\\) 1 of {k}"):
        load_rater_items(str(root))
