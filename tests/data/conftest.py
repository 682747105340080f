"""Tiny NIfTI fixtures laid out like each dataset's native folders."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

SHAPE = (8, 8, 4)


def write_nii(path, array, spacing=(1.0, 1.0, 1.0)) -> str:
    """Write ``array`` as NIfTI with a diagonal affine of ``spacing``; return the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*spacing, 1.0])), path)
    return str(path)


def label_volume(seed: int, n_classes: int = 4, shape=SHAPE) -> np.ndarray:
    """A small label map with every class present."""
    lab = np.random.default_rng(seed).integers(0, n_classes, shape).astype(np.uint8)
    lab.flat[:n_classes] = np.arange(n_classes)
    return lab


@pytest.fixture
def nii():
    """``nii(path, array, spacing=(1, 1, 1))`` writes a NIfTI file."""
    return write_nii


@pytest.fixture
def labvol():
    """``labvol(seed, n_classes=4, shape=SHAPE)``: a label map with every class present."""
    return label_volume


@pytest.fixture
def acdc_root(tmp_path):
    """ACDC: patient001 with Info.cfg (ED 1, ES 3); patient002 without (gt for frames 2 and 5);
    testing/patient101 with Info.cfg."""
    root = tmp_path / "ACDC"
    img = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    p1 = root / "training" / "patient001"
    for f in (1, 2, 3):
        write_nii(str(p1 / f"patient001_frame{f:02d}.nii.gz"), img)
    for f in (1, 3):
        write_nii(str(p1 / f"patient001_frame{f:02d}_gt.nii.gz"), label_volume(f))
    (p1 / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: DCM\nNbFrame: 30\n")
    p2 = root / "training" / "patient002"
    for f in (2, 4, 5):
        write_nii(str(p2 / f"patient002_frame{f:02d}.nii.gz"), img)
    for f in (2, 5):
        write_nii(str(p2 / f"patient002_frame{f:02d}_gt.nii.gz"), label_volume(f))
    p3 = root / "testing" / "patient101"
    for f in (1, 9):
        write_nii(str(p3 / f"patient101_frame{f:02d}.nii.gz"), img)
        write_nii(str(p3 / f"patient101_frame{f:02d}_gt.nii.gz"), label_volume(f))
    (p3 / "Info.cfg").write_text("ED: 1\nES: 9\n")
    return str(root)
