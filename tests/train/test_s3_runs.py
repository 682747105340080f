"""Runs of a bundle on S3 (moto server on 127.0.0.1): data items that are s3:// URLs are read
through the local cache, run folders are staged locally and uploaded, reruns resume from S3."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from calibseg import storage
from calibseg.cli.app import app

SECRET = "testing-secret-value"


@pytest.fixture
def s3_bucket(s3_bucket, monkeypatch, tmp_path):
    """The shared moto bucket plus a private cache folder."""
    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    return s3_bucket


def test_cache_remoted_replaces_urls_only(tmp_path, s3_bucket):
    from calibseg.data.remote import CacheRemoted

    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    storage.push(str(a), f"s3://{s3_bucket}/d/a.nii.gz")
    storage.push(str(b), f"s3://{s3_bucket}/d/b.nii.gz")
    item = {
        "case": "c0",
        "image": [f"s3://{s3_bucket}/d/a.nii.gz", str(b)],
        "label": f"s3://{s3_bucket}/d/b.nii.gz",
        "raters": [f"s3://{s3_bucket}/d/a.nii.gz", f"s3://{s3_bucket}/d/b.nii.gz"],
        "rater_1": str(a),
    }
    out = CacheRemoted(["image", "label", "raters", "rater_1", "rater_2"])(item)
    assert item["label"].startswith("s3://")  # the input item is not modified
    assert out["case"] == "c0" and out["rater_1"] == str(a) and "rater_2" not in out
    assert out["image"][1] == str(b)
    got = [out["image"][0], out["label"], *out["raters"]]
    assert not any(storage.is_remote(p) for p in got)
    assert [open(p, "rb").read() for p in got] == [b"first", b"second", b"first", b"second"]
    assert os.path.commonpath([*got, str(tmp_path / "cache")]) == str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="no such file"):
        CacheRemoted("image")({"image": f"s3://{s3_bucket}/d/missing.nii.gz"})


def _remote_files(url: str) -> dict[str, dict]:
    return {e["rel"]: e for e in storage.list_files(url)}


@pytest.mark.slow
def test_train_predict_evaluate_resume_on_s3(tiny_overrides, tmp_path, s3_bucket, monkeypatch):
    from calibseg.bundles import create_bundle
    from calibseg.cli import common
    from calibseg.data.synthetic import generate
    from calibseg.evaluate import evaluate_run, pipeline

    monkeypatch.setattr(common.console, "width", 200)
    monkeypatch.setattr(pipeline, "_figures", lambda *a, **k: [])  # figures: tests/visualize
    data = tmp_path / "synth"
    generate(str(data), n_cases=5, n_raters=2, shape=(16, 16, 16), seed=0)
    storage.push(str(data), f"s3://{s3_bucket}/synth")
    bundle = create_bundle(
        "synthetic",
        "hardl1ace_dice_ce",
        out=f"s3://{s3_bucket}/bundles",
        data_root=f"s3://{s3_bucket}/synth",
        overrides=tiny_overrides,
    )
    assert bundle.startswith(f"s3://{s3_bucket}/bundles/synthetic_hardl1ace_dice_ce_")
    splits = storage.read_json(f"{bundle}/splits.json")
    assert all(it["image"].startswith("s3://") for it in splits["training"])

    runner = CliRunner()
    res = runner.invoke(app, ["train", bundle, "--max-epochs", "1"])
    assert res.exit_code == 0, res.output
    run = f"{bundle}/seed_0"
    files = _remote_files(run)
    assert {
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/final.pt",
        "logs/train.log",
        "resolved_config.json",
        "training_summary.json",
    } <= set(files)
    assert any(r.startswith("logs/tensorboard/events") for r in files)
    first = storage.read_json(f"{run}/training_summary.json")
    assert first["epochs"] == 1 and len(first["history"]) == 1
    assert storage.read_json(f"{run}/resolved_config.json")["config"]["bundle_root"] == bundle

    res = runner.invoke(app, ["predict", bundle, "--seed", "0"])
    assert res.exit_code == 0, res.output
    preds = _remote_files(f"{run}/predictions")
    assert set(preds) == {
        f"{it['case']}_{k}.nii.gz" for it in splits["test"] for k in ("prob", "seg")
    }
    it = splits["test"][0]
    with storage.local_path(f"{run}/predictions/{it['case']}_prob.nii.gz") as p:
        prob = nib.load(p).get_fdata()
    with storage.local_path(it["image"]) as p:
        shape = nib.load(p).shape
    assert prob.shape == (*shape, 4)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)

    summary = evaluate_run(bundle, run_name="seed_0")
    assert summary["num_cases"] == len(splits["test"])
    assert {"cases.csv", "summary.json"} <= set(_remote_files(f"{run}/evaluation"))

    # a fresh cache (another machine): the rerun resumes from the checkpoint on S3
    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache2"))
    res = runner.invoke(app, ["train", bundle, "--max-epochs", "2"])
    assert res.exit_code == 0, res.output
    second = storage.read_json(f"{run}/training_summary.json")
    assert second["epochs"] == 2 and second["history"][0] == first["history"][0]
    log = storage.read_text(f"{run}/logs/train.log")
    assert log.count(' - INFO - epoch {"epoch": ') == 2  # epoch 1 once (first run), then 2
    assert log.count("from epoch 1") == 1 and '{"epoch": 2,' in log
    files2 = _remote_files(run)
    assert files2["checkpoints/last.pt"]["etag"] != files["checkpoints/last.pt"]["etag"]
    assert set(preds) <= {r.split("/", 1)[1] for r in files2 if r.startswith("predictions/")}

    # credentials are never written, neither to S3 nor to the local working folders
    for e in storage.list_files(f"s3://{s3_bucket}/bundles"):
        if not e["rel"].endswith((".pt", ".nii.gz")):
            assert SECRET.encode() not in storage.read_bytes(e["path"]), e["rel"]
    for root, _, names in os.walk(tmp_path):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                assert SECRET.encode() not in f.read(), n


def test_run_folder_mirror_and_upload(tmp_path, s3_bucket):
    from calibseg import storage_mirror as M

    run = f"s3://{s3_bucket}/b/seed_0"
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "logs").mkdir()
    (work / "checkpoints" / "last.pt").write_bytes(b"epoch-1")
    (work / "checkpoints" / ".last.pt.x1y2.part.pt").write_bytes(b"half")  # crashed write
    (work / "logs" / "train.log").write_text("line 1\n")
    (work / "training_summary.json").write_text("{}")
    M.push_run(str(work), run)
    assert set(_remote_files(run)) == {
        "checkpoints/last.pt",
        "logs/train.log",
        "training_summary.json",
    }
    assert not (work / "checkpoints" / ".last.pt.x1y2.part.pt").exists()
    storage.write_bytes(f"{run}/predictions/c0_prob.nii.gz", b"p")  # not needed to train

    # another working folder with stale files: the remote run is the truth
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.pt").write_bytes(b"stale, longer than the remote one")
    (other / "checkpoints" / "best.pt").write_bytes(b"from another run")
    (other / "resolved_config.json").write_text("{}")
    M.pull_run(run, str(other))
    got = {str(p.relative_to(other)) for p in other.rglob("*") if p.is_file()}
    assert got == {"checkpoints/last.pt", "logs/train.log", "training_summary.json"}
    assert (other / "checkpoints" / "last.pt").read_bytes() == b"epoch-1"
    assert (other / "logs" / "train.log").read_text() == "line 1\n"

    # no remote run: the working folder starts empty
    M.pull_run(f"s3://{s3_bucket}/b/seed_9", str(other))
    assert not other.exists()
