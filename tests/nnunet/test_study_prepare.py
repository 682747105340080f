"""The study's nnU-Net data, without training: loss names, label maps, refusals."""

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip(
    "nnunetv2", reason="nnU-Net extra not installed (make nnunet or pip install 'calibseg[nnunet]')"
)

from calibseg.nnunet import study as S  # noqa: E402


def test_trainer_loss_names():
    assert [S.trainer_loss(f"nnunet_{x}") for x in ("dicece", "hardl1ace", "softl1ace")] == [
        "dicece",
        "hardl1ace",
        "softl1ace",
    ]
    for bad in ("hardl1ace", "nnunet_focal", "baseline_dice_ce"):
        with pytest.raises(ValueError, match="not an nnU-Net study loss"):
            S.trainer_loss(bad)


def test_label_map_applied_and_range_checked(tmp_path):
    raw = np.array([[[0, 1], [2, 4]], [[4, 0], [1, 1]]], dtype=np.uint8)
    src = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.diag([1.0, 2.0, 3.0, 1.0])), src)
    dest = tmp_path / "out.nii.gz"
    S._write_label(str(src), str(dest), 4, {4: 3})  # BraTS: 4 → 3
    written = nib.load(dest)
    expected = raw.copy()
    expected[raw == 4] = 3
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    np.testing.assert_allclose(written.affine, np.diag([1.0, 2.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="has label 4; the study has 4 classes"):
        S._write_label(str(src), str(tmp_path / "x.nii.gz"), 4, None)


def _splits():
    def items(names):
        return [
            {"case": n, "image": f"/nowhere/{n}.nii.gz", "label": "/nowhere/l.nii.gz"}
            for n in names
        ]

    return {"training": items(["a", "b"]), "validation": items(["c"]), "test": items(["d"])}


def test_prepared_for_other_cases_is_refused(tmp_path):
    record = {
        "dataset": S.DATASET,
        "configuration": S.CONFIGURATION,
        "class_names": ["background", "organ"],
        "training": ["a", "b"],
        "validation": ["c"],
        "test": ["d"],
    }
    (tmp_path / "prepared.json").write_text(json.dumps(record))
    # the same cases: found as prepared, nothing read (the image paths do not exist)
    assert S.prepare_dataset(str(tmp_path), _splits(), ["background", "organ"]) == record
    other = _splits()
    other["validation"], other["training"] = (
        other["training"][:1],
        [*other["training"][1:], *other["validation"]],
    )
    with pytest.raises(ValueError, match="prepared for other cases or classes"):
        S.prepare_dataset(str(tmp_path), other, ["background", "organ"])
    with pytest.raises(ValueError, match="prepared for other cases or classes"):
        S.prepare_dataset(str(tmp_path), _splits(), ["background", "liver"])


def test_refusals_before_anything_is_written(tmp_path):
    no_val = _splits()
    no_val["validation"] = []
    with pytest.raises(ValueError, match="need validation cases"):
        S.prepare_dataset(str(tmp_path / "r"), no_val, ["background", "organ"])
    with pytest.raises(ValueError, match="need a local study folder"):
        S.prepare_dataset("s3://bucket/study/nnunet", _splits(), ["background", "organ"])
    with pytest.raises(FileNotFoundError, match="prepare_dataset first"):
        S.train_run(str(tmp_path / "r"), "dicece", 0)
    assert not (tmp_path / "r").exists()
