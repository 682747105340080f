"""A trained run stays usable when its bundle is created again with the data elsewhere."""

from __future__ import annotations

import os
import shutil

import nibabel as nib

from calibseg.bundles import bundle_hash, create_bundle, read_splits, resolve_data_root
from calibseg.bundles import runner as R


def test_checkpoints_survive_moving_the_data(
    tmp_path, tiny_bundle, trained, synth_root, monkeypatch, tiny_overrides
):
    monkeypatch.delenv("CALIBSEG_DATA_SYNTHETIC", raising=False)
    h = bundle_hash(tiny_bundle)
    moved = str(tmp_path / "moved")
    shutil.copytree(synth_root, moved)
    overrides = tiny_overrides
    out = os.path.dirname(tiny_bundle)
    try:
        again = create_bundle(
            "synthetic", "hardl1ace_dice_ce", out=out, data_root=moved, overrides=overrides
        )
        assert again == tiny_bundle and bundle_hash(again) == h
        assert R.load_checkpoint(os.path.join(trained, "checkpoints", "best.pt"), again)
        assert resolve_data_root(again) == moved
        items = read_splits(again, moved)["test"]
        assert all(it["image"].startswith(moved + os.sep) for it in items)
        best = os.path.join(trained, "checkpoints", "best.pt")
        pred = R.predict(again, checkpoint=best, run_name="moved_data")
        for it in items:
            prob = nib.load(os.path.join(pred, f"{it['case']}_prob.nii.gz"))
            assert prob.shape == (*nib.load(it["image"]).shape, 4)
    finally:  # the session's bundle points at the session's data again
        create_bundle(
            "synthetic", "hardl1ace_dice_ce", out=out, data_root=synth_root, overrides=overrides
        )
    assert resolve_data_root(tiny_bundle) == synth_root


def test_evaluate_reads_labels_under_the_given_data_root(
    tmp_path, tiny_bundle, trained, synth_root
):
    """`evaluate --data-root` scores against the labels under that root, not the recorded one:
    a moved copy whose first test label is all background reports every class as missing there."""
    import csv
    import subprocess
    import sys

    import numpy as np

    moved = str(tmp_path / "moved_labels")
    shutil.copytree(synth_root, moved)
    case = read_splits(tiny_bundle)["test"][0]
    label_rel = os.path.relpath(case["label"], synth_root)
    img = nib.load(os.path.join(moved, label_rel))
    empty = np.zeros(img.shape, dtype=np.uint8)
    nib.save(nib.Nifti1Image(empty, img.affine), os.path.join(moved, label_rel))
    R.predict(
        tiny_bundle,
        checkpoint=os.path.join(trained, "checkpoints", "best.pt"),
        run_name="eval_root",
    )
    calibseg = os.path.join(os.path.dirname(sys.executable), "calibseg")

    def missing(root: str | None, out: str) -> dict[str, float]:
        cmd = [calibseg, "evaluate", tiny_bundle, "--run", "eval_root", "--out", out]
        cmd += ["--data-root", root] if root else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with open(os.path.join(out, "cases.csv")) as f:
            return {
                r["class"]: float(r["value"])
                for r in csv.DictReader(f)
                if r["case"] == case["case"] and r["metric"] == "missing"
            }

    original = missing(None, str(tmp_path / "ev_orig"))
    moved_missing = missing(moved, str(tmp_path / "ev_moved"))
    foreground = [c for c in original if c != "background"]
    assert len(foreground) == 3
    assert all(original[c] == 0 for c in foreground)
    assert all(moved_missing[c] == 1 for c in foreground)
