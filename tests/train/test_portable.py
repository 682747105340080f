"""A trained run stays usable when its bundle is created again with the data elsewhere."""

from __future__ import annotations

import os
import shutil

import nibabel as nib

from calibseg.bundles import bundle_hash, create_bundle, read_splits, resolve_data_root
from calibseg.bundles import runner as R


def test_checkpoints_survive_moving_the_data(
    tmp_path, tiny_bundle, trained, synth_root, monkeypatch
):
    monkeypatch.delenv("CALIBSEG_DATA_SYNTHETIC", raising=False)
    h = bundle_hash(tiny_bundle)
    moved = str(tmp_path / "moved")
    shutil.copytree(synth_root, moved)
    overrides = {
        "common#roi_size": [16, 16, 16],
        "common#network_def#init_filters": 4,
        "common#deep_supervision_depth": 2,
        "common#network_def#blocks_down": [1, 1, 1],
        "train#max_epochs": 2,
    }
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
