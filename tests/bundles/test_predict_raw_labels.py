"""`predict --raw-labels` writes label maps in the dataset's own label values (BraTS: ET = 4).

The network is a stand-in whose argmax is the class encoded in its (z-scored) input, so a
prediction of a BraTS case gives back the case's own label file: as class indices (raw 4 → 3)
by default, and value for value with ``raw_labels``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

SHAPE = (20, 18, 12)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
RAW = (0, 1, 2, 4)  # BraTS 2021 label values, class indices 0..3
CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")

STANDIN = '''
import torch


class ClassOfInput(torch.nn.Module):
    """Logits whose argmax is the bucket of channel 0 between the given thresholds."""

    def __init__(self, num_classes: int, thresholds, **_):
        super().__init__()
        self.num_classes = int(num_classes)
        self.register_buffer("t", torch.tensor(thresholds, dtype=torch.float32), persistent=False)

    def forward(self, x):
        lab = torch.bucketize(x[:, 0].contiguous(), self.t).clamp(0, self.num_classes - 1)
        return 30.0 * torch.nn.functional.one_hot(lab, self.num_classes).movedim(-1, 1).to(x.dtype)
'''


def _raw_label() -> np.ndarray:
    """Blocks of raw labels 1, 2 and 4, not symmetric in any axis."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:9, 3:15, 1:5] = 1
    lab[12:19, 2:8, 2:10] = 2
    lab[6:11, 10:17, 6:11] = 4
    return lab


def _thresholds(index: np.ndarray) -> list[float]:
    """Midpoints between the z-scored intensity levels 100 + 100 c (population std, as MONAI's
    NormalizeIntensity over the non-zero voxels, which here are all voxels)."""
    x = 100.0 + 100.0 * index.astype(np.float64)
    z = (100.0 + 100.0 * np.arange(4) - x.mean()) / x.std()
    return [float(v) for v in (z[:-1] + z[1:]) / 2]


@pytest.fixture
def brats_bundle(tmp_path, standin_bundle):
    raw = _raw_label()
    index = np.searchsorted(RAW, raw).astype(np.uint8)
    root = tmp_path / "brats"
    for i in range(3):
        case = f"BraTS2021_{i:05d}"
        (root / case).mkdir(parents=True)
        img = (100.0 + 100.0 * index).astype(np.float32)
        for m in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(img, AFFINE), root / case / f"{case}_{m}.nii.gz")
        nib.save(nib.Nifti1Image(raw, AFFINE), root / case / f"{case}_seg.nii.gz")
    network = {
        "_target_": "standin_classes.ClassOfInput",
        "num_classes": "@num_classes",
        "thresholds": _thresholds(index),
    }
    bundle, mods = standin_bundle("brats21", root, "standin_classes", STANDIN, network)
    return bundle, root, mods


def _seg(out: str, case: str) -> nib.Nifti1Image:
    return nib.load(os.path.join(out, f"{case}_seg.nii.gz"))


def test_raw_labels_give_back_the_dataset_label_files(brats_bundle):
    from calibseg.bundles.runner import predict

    bundle, root, _ = brats_bundle
    items = [
        {
            "case": c,
            "image": [str(root / c / f"{c}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")],
        }
        for c in ("BraTS2021_00000", "BraTS2021_00002")
    ]
    raw = _raw_label()
    out = predict(bundle, run_name="standin", cases=items)
    as_index = {it["case"]: np.asarray(_seg(out, it["case"]).dataobj) for it in items}
    prob = {
        it["case"]: np.asarray(nib.load(os.path.join(out, f"{it['case']}_prob.nii.gz")).dataobj)
        for it in items
    }
    for case, seg in as_index.items():  # the default: class indices, ET as 3
        assert np.array_equal(seg, np.where(raw == 4, 3, raw)), case
    out = predict(bundle, run_name="standin", cases=items, raw_labels=True)
    for it in items:
        img = _seg(out, it["case"])
        assert img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, AFFINE)
        assert np.array_equal(np.asarray(img.dataobj), raw), it["case"]
        p = np.asarray(nib.load(os.path.join(out, f"{it['case']}_prob.nii.gz")).dataobj)
        assert np.array_equal(p, prob[it["case"]])  # probabilities untouched
    assert sorted(os.listdir(out)) == sorted(
        f"{it['case']}_{k}.nii.gz" for it in items for k in ("prob", "seg")
    )


def test_raw_labels_through_the_console_script(brats_bundle):
    bundle, _, mods = brats_bundle
    env = {**os.environ, "PYTHONPATH": f"{mods}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(
        [CALIBSEG, "predict", bundle, "--run-name", "standin", "--split", "test", "--raw-labels"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    segs = [n for n in os.listdir(os.path.join(bundle, "standin", "predictions")) if "_seg" in n]
    assert len(segs) == 1
    got = np.asarray(_seg(os.path.join(bundle, "standin", "predictions"), segs[0][:-11]).dataobj)
    assert np.array_equal(got, _raw_label())


def test_raw_label_map_inverts_label_maps_and_refuses_ambiguous_ones():
    from calibseg.data import get_dataset

    brats = get_dataset("brats21")
    assert brats.raw_label_map() == {3: 4}
    assert get_dataset("acdc17").raw_label_map() == {}
    assert dataclasses.replace(brats, label_map={0: 0, 4: 3}).raw_label_map() == {3: 4}
    with pytest.raises(ValueError, match="raw labels 4 and 5 to class 3"):
        dataclasses.replace(brats, label_map={4: 3, 5: 3}).raw_label_map()
    with pytest.raises(ValueError, match="class 1 is also the raw label moved"):
        dataclasses.replace(brats, label_map={1: 2}).raw_label_map()
