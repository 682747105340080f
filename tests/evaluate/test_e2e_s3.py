"""End to end against the local S3 server: bundle create → train --debug → predict → storage
push → evaluate on s3:// (outputs written to S3) → storage pull of the evaluation."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from calibseg import storage
from calibseg.cli.app import app


@pytest.mark.slow
def test_bundle_train_predict_then_evaluate_on_s3(tiny_overrides, tmp_path, s3_bucket, monkeypatch):
    from calibseg.bundles import create_bundle
    from calibseg.cli import common
    from calibseg.data.synthetic import generate

    monkeypatch.setattr(common.console, "width", 200)
    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    data = tmp_path / "synth"
    generate(str(data), n_cases=5, n_raters=2, shape=(16, 16, 16), seed=0)
    # the dataset also lives on S3 (labels are read from there by the evaluation)
    assert (
        runner.invoke(app, ["storage", "push", str(data), f"s3://{s3_bucket}/synth"]).exit_code == 0
    )

    bundle = create_bundle(
        "synthetic",
        "hardl1ace_dice_ce",
        out=str(tmp_path / "bundles"),
        data_root=str(data),
        overrides=tiny_overrides,
    )
    res = runner.invoke(app, ["train", bundle, "--debug", "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["predict", bundle])
    assert res.exit_code == 0, res.output

    # point the test labels at the S3 copy, then move the whole bundle to S3
    splits_path = os.path.join(bundle, "splits.json")
    splits = json.loads(open(splits_path).read())
    for item in splits["test"]:
        rel = os.path.relpath(item["label"], data)
        item["label"] = f"s3://{s3_bucket}/synth/{rel}"
    storage.write_json(splits_path, splits)
    url = f"s3://{s3_bucket}/bundles/{os.path.basename(bundle)}"
    res = runner.invoke(app, ["storage", "push", bundle, url])
    assert res.exit_code == 0, res.output

    res = runner.invoke(app, ["evaluate", url, "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert "organ" in res.output and f"{url}/seed_0/evaluation" in res.output
    remote = {e["rel"] for e in storage.list_files(f"{url}/seed_0/evaluation")}
    assert {
        "cases.csv",
        "summary.json",
        "bin_stats.npz",
        "dataset_reliability_diagram.png",
    } <= remote
    assert not os.path.exists(os.path.join(bundle, "seed_0", "evaluation"))  # nothing local

    local = tmp_path / "pulled"
    res = runner.invoke(app, ["storage", "pull", f"{url}/seed_0/evaluation", str(local)])
    assert res.exit_code == 0, res.output
    summary = json.loads((local / "summary.json").read_text())
    n_test = len(splits["test"])
    assert summary["num_cases"] == n_test and summary["class_names"][0] == "background"
    for cls in summary["classes"].values():
        assert 0.0 <= cls["micro"]["ece"] <= 1.0 and 0.0 <= cls["macro"]["mce"] <= 1.0
        assert cls["dice"]["mean"] is None or 0.0 <= cls["dice"]["mean"] <= 1.0
    assert "testing-secret-value" not in (local / "summary.json").read_text()
