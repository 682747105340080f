"""Fixtures: hand-made member predictions (NIfTI, channel last) on a tiny grid."""

import os

import nibabel as nib
import numpy as np
import pytest

AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])


def write_member(folder: str, probs: dict[str, np.ndarray]) -> str:
    """probs: case → [C, x, y, z]; written as <case>_prob.nii.gz [x, y, z, C]."""
    os.makedirs(folder, exist_ok=True)
    for case, p in probs.items():
        img = nib.Nifti1Image(np.moveaxis(p, 0, -1).astype(np.float32), AFFINE)
        nib.save(img, os.path.join(folder, f"{case}_prob.nii.gz"))
    return folder


def random_probs(rng, c=3, shape=(5, 4, 3)) -> np.ndarray:
    logits = rng.normal(0, 2, (c, *shape))
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


@pytest.fixture
def tools():
    """Helpers for tests: AFFINE, write_member, random_probs."""
    from types import SimpleNamespace

    return SimpleNamespace(AFFINE=AFFINE, write_member=write_member, random_probs=random_probs)


@pytest.fixture
def members(tmp_path):
    """Three members (rater1_seed1, rater1_seed2, rater2_seed1) × two cases; returns
    (bundle-like folder, {member: {case: prob [C, x, y, z]}})."""
    rng = np.random.default_rng(0)
    names = ["rater1_seed1", "rater1_seed2", "rater2_seed1"]
    data = {n: {c: random_probs(rng) for c in ("case_a", "case_b")} for n in names}
    for n in names:
        write_member(str(tmp_path / "bundle" / n / "predictions"), data[n])
    return str(tmp_path / "bundle"), data
