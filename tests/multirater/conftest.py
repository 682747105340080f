"""Fixtures: a tiny synthetic multi-rater dataset and predictions made from its raters."""

import json
import os

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="session")
def synth_multirater(tmp_path_factory):
    """(dataset.json path, prediction folder, second prediction folder) for 3 cases × 3 raters."""
    from calibseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("mr")
    path = generate(str(root / "data"), n_cases=3, n_raters=3, shape=(12, 12, 8), seed=0)
    meta = json.load(open(path))
    rng = np.random.default_rng(0)
    folders = []
    for name, scale in (("good", 4.0), ("poor", 1.0)):
        out = root / name
        out.mkdir()
        for it in meta["training"]:
            img = nib.load(os.path.join(root / "data", it["raters"][0]))
            lab = np.asarray(img.dataobj).astype(int)
            logits = np.eye(4)[lab] * scale + rng.normal(0, 1, (*lab.shape, 4))
            p = np.exp(logits)
            p /= p.sum(-1, keepdims=True)
            nib.save(
                nib.Nifti1Image(p.astype(np.float32), img.affine), out / f"{it['case']}_prob.nii.gz"
            )
        folders.append(str(out))
    return path, folders[0], folders[1]
