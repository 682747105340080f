"""`predict` puts predictions back on the original grid of an anisotropic, non-RAS image.

The network is a stand-in that returns the one-hot of the label encoded in its (resampled,
reoriented, intensity-scaled) input, so a correct inversion gives back the original label map
up to interpolation at boundaries, and the saved files carry the original affine.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

# 1.5 × 1.5 × 10 mm voxels in LPS orientation (x towards left… as DICOM/ITK CT), an oblique
# origin; amos22 resamples to 1.5 × 1.5 × 2 mm and reorients to RAS before the network
SPACING = (1.5, 1.5, 10.0)
AFFINE = np.array(
    [
        [-SPACING[0], 0.0, 0.0, 120.0],
        [0.0, -SPACING[1], 0.0, 95.0],
        [0.0, 0.0, SPACING[2], -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (22, 19, 7)
LEVELS = 3  # labels 0..3 encoded as HU -100 + 100·label → [0, 1] after amos22's HU window

STANDIN = '''
import torch


class OneHotOfInput(torch.nn.Module):
    """Logits whose softmax is (almost) the one-hot of round(x · levels)."""

    def __init__(self, num_classes: int, levels: int, **_):
        super().__init__()
        self.num_classes, self.levels = int(num_classes), int(levels)

    def forward(self, x):
        lab = torch.round(x[:, 0] * self.levels).long().clamp(0, self.num_classes - 1)
        onehot = torch.nn.functional.one_hot(lab, self.num_classes).movedim(-1, 1)
        return 30.0 * onehot.to(x.dtype)
'''


def _label(seed: int) -> np.ndarray:
    """Blocks of labels 1..3 that are not symmetric in any axis (a flip would show)."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:9, 3:15, 1:5] = 1
    lab[12:20, 2:8, 2:7] = 2
    lab[5 + seed : 11 + seed, 10:17, 4:6] = 3
    return lab


@pytest.fixture
def anisotropic_lps_bundle(tmp_path, standin_bundle):
    root = tmp_path / "amos"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        lab = _label(i)
        img = (-100.0 + 100.0 * lab).astype(np.float32)
        nib.save(nib.Nifti1Image(img, AFFINE), root / "imagesTr" / f"amos_{i + 1:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"amos_{i + 1:04d}.nii.gz")
    network = {
        "_target_": "standin_net.OneHotOfInput",
        "num_classes": "@num_classes",
        "levels": LEVELS,
    }
    bundle, _ = standin_bundle("amos22", root, "standin_net", STANDIN, network)
    return bundle, root


def test_predict_inverts_spacing_and_orientation(anisotropic_lps_bundle):
    from calibseg.bundles.runner import predict

    bundle, root = anisotropic_lps_bundle
    items = [
        {"case": f"amos_{i + 1:04d}", "image": str(root / "imagesTr" / f"amos_{i + 1:04d}.nii.gz")}
        for i in range(3)
    ]
    out = predict(bundle, run_name="standin", cases=items)
    for i, it in enumerate(items):
        lab = _label(i)
        prob = nib.load(os.path.join(out, f"{it['case']}_prob.nii.gz"))
        seg = nib.load(os.path.join(out, f"{it['case']}_seg.nii.gz"))
        for im in (prob, seg):
            np.testing.assert_allclose(im.affine, AFFINE, atol=1e-5)
        p = np.asarray(prob.dataobj)
        assert p.shape == (*SHAPE, 16)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
        got = np.asarray(seg.dataobj)
        assert np.array_equal(got, p.argmax(-1))
        for c in range(1, LEVELS + 1):
            a, b = got == c, lab == c
            dice = 2 * np.sum(a & b) / (a.sum() + b.sum())
            assert dice > 0.97, (it["case"], c, dice)
        assert np.mean(got == lab) > 0.98
