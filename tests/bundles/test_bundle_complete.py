"""A bundle is complete or absent: an interrupted `bundle create --out s3://…` is never reused
as if whole; rerunning the command repairs it (moto S3 server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from calibseg import storage
from calibseg.bundles import (
    BUNDLE_FILES,
    COMPLETE_MARKER,
    DATA_ROOT_FILE,
    bundle_name,
    bundle_status,
    create_bundle,
    require_bundle,
)
from calibseg.cli import common
from calibseg.cli.app import app


def test_interrupted_remote_create_is_refused_then_repaired(
    tmp_path, s3_bucket, synth_root, monkeypatch, capsys
):
    out = f"s3://{s3_bucket}/bundles"
    real = storage.write_bytes
    calls = {"n": 0}

    def dies_after_four(path, data):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C while uploading the 5th file
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(storage, "write_bytes", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        create_bundle("synthetic", "baseline_ce", out=out, data_root=synth_root)
    monkeypatch.setattr(storage, "write_bytes", real)
    path = f"{out}/{bundle_name('synthetic', 'baseline_ce', synth_root)}"
    present = {e["rel"] for e in storage.list_files(path)}
    assert len(present) == 4 and COMPLETE_MARKER not in present
    assert bundle_status(path) == "incomplete"

    # training, prediction and evaluation refuse it in one line instead of failing later
    for cmd in (["train", path], ["predict", path]):
        rc = common.run_app(app, cmd)
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "is incomplete" in err, err
    with pytest.raises(FileNotFoundError, match="incomplete"):
        require_bundle(path)

    rc = common.run_app(
        app,
        ["bundle", "create", "--data", "synthetic", "--loss", "baseline_ce",
         "--data-root", synth_root, "--out", out],
    )  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0 and "repaired" in cap.out, cap.out + cap.err
    files = {e["rel"] for e in storage.list_files(path)}
    assert files == {*BUNDLE_FILES, "splits.json", DATA_ROOT_FILE, COMPLETE_MARKER}
    assert bundle_status(path) == "complete" and require_bundle(path) == path
    # the repaired bundle is byte-identical to one created in one go locally
    local = create_bundle("synthetic", "baseline_ce", out=str(tmp_path), data_root=synth_root)
    for rel in (*BUNDLE_FILES, "splits.json", DATA_ROOT_FILE):
        with open(f"{local}/{rel}", "rb") as f:
            assert storage.read_bytes(f"{path}/{rel}") == f.read(), rel


def test_marker_is_written_last_remote(s3_bucket, synth_root, monkeypatch):
    order: list[str] = []
    real = storage.write_bytes

    def record(path, data):
        order.append(str(path).rsplit("/", 1)[-1])
        real(path, data)

    monkeypatch.setattr(storage, "write_bytes", record)
    create_bundle("synthetic", "baseline_dice", out=f"s3://{s3_bucket}/b", data_root=synth_root)
    assert order[-1] == COMPLETE_MARKER and len(order) == len(BUNDLE_FILES) + 3


def test_repair_refuses_a_file_that_differs(s3_bucket, synth_root):
    out = f"s3://{s3_bucket}/bundles"
    path = create_bundle("synthetic", "softl1ace_ce", out=out, data_root=synth_root)
    storage.rm(f"{path}/{COMPLETE_MARKER}")
    storage.rm(f"{path}/splits.json")
    storage.write_bytes(f"{path}/configs/train.yaml", b"max_epochs: 1\n")
    with pytest.raises(FileExistsError, match="differs"):
        create_bundle("synthetic", "softl1ace_ce", out=out, data_root=synth_root)
