"""A created bundle is a runnable MONAI bundle: `python -m monai.bundle run training|inference`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from calibseg.bundles import CONFIG_FILES, create_bundle, load_bundle
from calibseg.bundles.workflow import he_init


def _monai_run(workflow: str, bundle: str, *extra: str) -> subprocess.CompletedProcess:
    configs = [os.path.join(bundle, "configs", f"{c}.yaml") for c in CONFIG_FILES if c != "debug"]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        workflow,
        "--bundle_root",
        bundle,
        "--meta_file",
        os.path.join(bundle, "metadata.json"),
        "--config_file",
        json.dumps(configs),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CALIBSEG_DATA_SYNTHETIC", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_monai_bundle_run_trains_and_predicts(tiny_overrides, tmp_path, synth_root):
    bundle = create_bundle(
        "synthetic",
        "hardl1ace_dice_ce",
        out=str(tmp_path),
        data_root=synth_root,
        overrides=tiny_overrides,
    )
    res = _monai_run("training", bundle)
    assert res.returncode == 0, res.stderr[-4000:]
    run = os.path.join(bundle, "seed_0")
    ckpts = sorted(os.listdir(os.path.join(run, "checkpoints")))
    assert ckpts == ["best.pt", "final.pt", "last.pt"]
    last = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert last["run"]["epoch"] == 2 and last["trainer"]["iteration"] == 2 * 2  # 3 cases, batch 2
    # validation metrics: MONAI's mean Dice and calibseg's calibration errors, each epoch
    logged = res.stdout + res.stderr
    assert logged.count("val_mean_dice") >= 2 and "val_ece_macro" in logged
    history = json.load(open(os.path.join(run, "training_summary.json")))["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert 0.0 <= h["dice"] <= 1.0 and 0.0 <= h["ece"] <= h["mce"] <= 1.0
        assert 0.0 <= h["ece_micro"] <= h["mce_micro"] <= 1.0
    assert os.path.isfile(os.path.join(run, "validation", "dataset_reliability_diagram.png"))
    # it trained: every conv weight moved away from the seeded He initialisation
    init = load_bundle(bundle).get_parsed_content("network_def", lazy=False)
    he_init(init, 0)
    convs = {k: v for k, v in init.state_dict().items() if v.ndim == 5}
    assert convs and all(not torch.equal(v, last["model"][k]) for k, v in convs.items())
    assert history[1]["loss"] < history[0]["loss"]

    # `evaluating` validates best.pt alone: the Dice and ECE recorded at the best epoch
    summary = json.load(open(os.path.join(run, "training_summary.json")))
    res = _monai_run("evaluating", bundle)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.load(open(os.path.join(run, "validation", "metrics.json")))
    at_best = history[summary["best_epoch"] - 1]
    assert metrics["val_mean_dice"] == pytest.approx(at_best["dice"], abs=1e-6)
    assert metrics["val_ece_macro"] == pytest.approx(at_best["ece"], abs=1e-6)

    res = _monai_run("inference", bundle)
    assert res.returncode == 0, res.stderr[-4000:]
    test_items = json.load(open(os.path.join(bundle, "splits.json")))["test"]
    for it in test_items:
        img = nib.load(it["image"])
        prob = nib.load(os.path.join(run, "predictions", f"{it['case']}_prob.nii.gz"))
        seg = nib.load(os.path.join(run, "predictions", f"{it['case']}_seg.nii.gz"))
        p = prob.get_fdata()
        assert p.shape == (*img.shape, 4) and seg.shape == img.shape
        np.testing.assert_allclose(prob.affine, img.affine)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), p.argmax(-1))
