"""Multi-rater data → nnU-Net raw datasets (no nnU-Net needed)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from calibseg.data.synthetic import generate
from calibseg.nnunet.convert import convert_multirater, majority_vote


def _read(path):
    return np.asarray(nib.load(path).dataobj)


def test_majority_vote_by_hand():
    a = np.array([0, 1, 2, 2, 0])
    b = np.array([1, 1, 2, 0, 2])
    c = np.array([1, 0, 0, 1, 3])
    # voxel 3: one vote each for 2, 0, 1 → lowest label 0; voxel 4: 0, 2, 3 → 0
    assert majority_vote([a, b, c]).tolist() == [1, 1, 2, 0, 0]
    assert majority_vote([a]).tolist() == a.tolist()
    with pytest.raises(ValueError):
        majority_vote([])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(str(root), n_cases=4, n_raters=3, shape=(12, 10, 8), seed=3)
    return root


def test_synthetic_to_one_dataset_per_rater_and_majority(synth, tmp_path):
    raw = tmp_path / "raw"
    out = convert_multirater(str(synth), str(raw), 601, name="Syn", test_cases=1)
    assert [d["name"] for d in out] == [
        "Dataset601_SynRater1",
        "Dataset602_SynRater2",
        "Dataset603_SynRater3",
        "Dataset604_SynMajority",
    ]
    assert sorted(os.listdir(raw)) == [d["name"] for d in out]  # no temporary folders left
    meta = json.loads((raw / "Dataset602_SynRater2" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "organ": 1, "vessel": 2, "lesion": 3}
    assert meta["channel_names"] == {"0": "image"}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    d2 = raw / "Dataset602_SynRater2"
    assert sorted(os.listdir(d2 / "imagesTr")) == [f"synth_00{i}_0000.nii.gz" for i in range(3)]
    assert sorted(os.listdir(d2 / "labelsTr")) == [f"synth_00{i}.nii.gz" for i in range(3)]
    assert os.listdir(d2 / "imagesTs") == ["synth_003_0000.nii.gz"]
    for i in range(3):
        src = synth / "labelsTr" / f"synth_00{i}_rater2.nii.gz"
        dst = d2 / "labelsTr" / f"synth_00{i}.nii.gz"
        np.testing.assert_array_equal(_read(dst), _read(src))
        np.testing.assert_allclose(nib.load(dst).affine, nib.load(src).affine)
        img = (synth / "imagesTr" / f"synth_00{i}.nii.gz").read_bytes()
        assert (d2 / "imagesTr" / f"synth_00{i}_0000.nii.gz").read_bytes() == img
        # the generator's own majority-vote label (its code, not ours) is the majority dataset
        maj = raw / "Dataset604_SynMajority" / "labelsTr" / f"synth_00{i}.nii.gz"
        np.testing.assert_array_equal(_read(maj), _read(synth / "labelsTr" / f"synth_00{i}.nii.gz"))


def test_curvas_layout(tmp_path):
    root = tmp_path / "curvas"
    rng = np.random.default_rng(0)
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    for case in ("c1", "c2"):
        (root / case).mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(rng.normal(size=(6, 5, 4)).astype(np.float32), aff),
            root / case / "image.nii.gz",
        )
        for k in (1, 2):
            lab = rng.integers(0, 4, (6, 5, 4)).astype(np.uint8)
            nib.save(nib.Nifti1Image(lab, aff), root / case / f"annotation_{k}.nii.gz")
    out = convert_multirater(str(root), str(tmp_path / "raw"), 10, name="Curvas", majority=False)
    assert [d["rater"] for d in out] == [1, 2]
    got = _read(tmp_path / "raw" / "Dataset011_CurvasRater2" / "labelsTr" / "c2.nii.gz")
    np.testing.assert_array_equal(got, _read(root / "c2" / "annotation_2.nii.gz"))
    meta = json.loads((tmp_path / "raw" / "Dataset010_CurvasRater1" / "dataset.json").read_text())
    assert meta["labels"]["background"] == 0 and len(meta["labels"]) == 4


def test_existing_id_is_refused_and_nothing_is_written(synth, tmp_path):
    raw = tmp_path / "raw"
    (raw / "Dataset602_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="602"):
        convert_multirater(str(synth), str(raw), 601, name="Syn")
    assert os.listdir(raw) == ["Dataset602_Other"]
    with pytest.raises(ValueError, match="name"):
        convert_multirater(str(synth), str(raw), 601, name="bad name")
    with pytest.raises(ValueError, match="test_cases"):
        convert_multirater(str(synth), str(raw), 701, name="Syn", test_cases=4)
