"""Registry, data roots and per-dataset MONAI pipelines on tiny native-layout fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibseg import transforms as T
from calibseg.data import get_dataset, list_datasets, rater_keys
from calibseg.data.synthetic import generate


def test_registry_names_and_specs():
    assert list_datasets() == ["acdc17", "amos22", "brats21", "curvas", "kits23", "synthetic"]
    with pytest.raises(
        ValueError, match="valid datasets: acdc17, amos22, brats21, curvas, kits23, synthetic"
    ):
        get_dataset("lits")
    acdc = get_dataset("acdc17")
    assert acdc.class_names == ("background", "right ventricle", "myocardium", "left ventricle")
    assert acdc.spacing == (1.0, 1.0, 5.0) and acdc.env_var == "CALIBSEG_DATA_ACDC17"
    assert get_dataset("AMOS22").num_classes == 16
    assert get_dataset("brats21").in_channels == 4
    assert get_dataset("kits23").class_names == ("background", "kidney", "tumour", "cyst")
    assert acdc.region_transform(True) is None
    assert isinstance(
        get_dataset("kits23").region_transform(True), T.ConvertToKits23ClassesSoftmaxd
    )
    lab = get_dataset("brats21").region_transform(False)
    assert isinstance(lab, T.ConvertToBratsClassesd) and list(lab.keys) == ["label"]
    assert get_dataset("brats21").region_names == ["background", "ET", "TC", "WT"]


def test_resolve_root(tmp_path, monkeypatch):
    spec = get_dataset("kits23")
    monkeypatch.delenv(spec.env_var, raising=False)
    with pytest.raises(ValueError, match="--data-root DIR or set CALIBSEG_DATA_KITS23"):
        spec.resolve_root(None)
    monkeypatch.setenv(spec.env_var, str(tmp_path))
    assert spec.resolve_root(None) == str(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert spec.resolve_root(str(other)) == str(other)  # the option wins over the env var
    monkeypatch.setenv(spec.env_var, str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="from CALIBSEG_DATA_KITS23 does not exist"):
        spec.resolve_root(None)


def test_ct_pipeline_clips_scales_and_reorients(tmp_path, nii):
    # amos22 spacing is 1.5 x 1.5 x 2 mm: write on that grid so resampling is the identity
    x = np.array([-1000.0, -100.0, 50.0, 200.0, 1000.0, 0.0], dtype=np.float32)
    img = np.broadcast_to(x[:, None, None], (6, 4, 3)).copy()
    lab = np.broadcast_to(np.arange(6, dtype=np.uint8)[:, None, None], (6, 4, 3)).copy()
    # x axis stored right-to-left (negative x spacing): RAS orientation must flip it
    for path, arr in (("imagesTr/amos_0001.nii.gz", img), ("labelsTr/amos_0001.nii.gz", lab)):
        import nibabel as nib

        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.diag([-1.5, 1.5, 2.0, 1.0])), str(tmp_path / path))
    spec = get_dataset("amos22")
    item = spec.scan(str(tmp_path))[0]
    d = spec.transforms("val")(item)
    expected = np.clip((x + 100) / 300, 0, 1)[::-1]
    np.testing.assert_allclose(d["image"][0, :, 0, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(d["label"][0, :, 0, 0].numpy(), np.arange(6)[::-1])
    assert d["image"].shape == (1, 6, 4, 3)
    inf = spec.transforms("infer")(item)
    assert set(k for k, v in inf.items() if isinstance(v, torch.Tensor)) == {"image"}


def test_mri_pipeline_resamples_and_normalises_nonzero(acdc_root):
    spec = get_dataset("acdc17")
    item = spec.scan(acdc_root)[0]
    import nibabel as nib

    # rewrite the first frame on a 2 x 2 x 10 mm grid with a zero border
    img = np.zeros((8, 8, 4), np.float32)
    img[2:6, 2:6, :] = np.random.default_rng(1).uniform(1, 5, (4, 4, 4))
    lab = (img > 0).astype(np.uint8) * 3
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2.0, 10.0, 1.0])), item["image"])
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 10.0, 1.0])), item["label"])
    d = spec.transforms("val")(item)
    assert d["image"].shape[1:] == d["label"].shape[1:]
    assert d["image"].shape[1] in (15, 16) and d["image"].shape[3] in (7, 8)  # 1 x 1 x 5 mm
    np.testing.assert_allclose(d["image"].pixdim.numpy(), [1.0, 1.0, 5.0])
    assert set(np.unique(d["label"].numpy())) <= {0.0, 3.0}  # nearest for labels
    v = d["image"].numpy()[0]
    nz = v[v != 0]
    assert abs(nz.mean()) < 1e-4 and abs(nz.std() - 1) < 1e-3


def test_brats_pipeline_stacks_channels_and_maps_4_to_3(tmp_path, nii):
    case = "BraTS2021_00001"
    seg = np.zeros((6, 6, 4), np.uint8)
    seg[1, 1, 1], seg[2, 2, 2], seg[3, 3, 3] = 1, 2, 4
    for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
        arr = np.zeros((6, 6, 4), np.float32)
        arr[1:5, 1:5, 1:3] = (c + 1) * np.arange(1, 33, dtype=np.float32).reshape(4, 4, 2)
        nii(str(tmp_path / case / f"{case}_{m}.nii.gz"), arr)
    nii(str(tmp_path / case / f"{case}_seg.nii.gz"), seg)
    spec = get_dataset("brats21")
    d = spec.transforms("val")(spec.scan(str(tmp_path))[0])
    assert d["image"].shape == (4, 6, 6, 4)
    assert sorted(np.unique(d["label"].numpy()).tolist()) == [0, 1, 2, 3]
    assert d["label"][0, 3, 3, 3] == 3
    for c in range(4):  # each channel z-scored over its own non-zero voxels
        v = d["image"][c].numpy()
        np.testing.assert_allclose([v[v != 0].mean(), v[v != 0].std()], [0, 1], atol=1e-4)
    regions = spec.region_transform(False)(d)["label"]
    assert regions.shape == (4, 6, 6, 4)
    assert regions[1].sum() == 1 and regions[2].sum() == 2 and regions[3].sum() == 3  # ET, TC, WT


def test_train_pipeline_crops_pads_and_sets_rater_target(tmp_path):
    generate(str(tmp_path), n_cases=1, n_raters=3, shape=(20, 16, 10), seed=0)
    spec = get_dataset("synthetic")
    item = spec.scan(str(tmp_path))[0]
    keys = rater_keys(3)
    tf = spec.transforms("train", roi_size=(16, 16, 16), rater_keys=keys)
    tf.set_random_state(seed=0)
    d = tf(item)
    assert isinstance(d, dict)
    for k in ("image", "label", *keys):
        assert d[k].shape == (1, 16, 16, 16), k  # cropped in x/y, padded in z
    mean = spec.transforms("train", (16, 16, 16), keys, rater="mean")
    mean.set_random_state(seed=0)
    m = mean(item)
    assert m["label"].shape == (4, 16, 16, 16)
    classes = torch.arange(4).view(4, 1, 1, 1)
    hots = torch.stack([(m[k].as_tensor() == classes).float() for k in keys])
    torch.testing.assert_close(m["label"].as_tensor(), hots.mean(0))
    two = spec.transforms("val", (16, 16, 16), keys, rater=2)(item)
    assert torch.equal(two["label"], two["rater_2"]) and two["label"].shape == (1, 20, 16, 10)
    with pytest.raises(ValueError, match="needs rater_keys"):
        spec.transforms("train", (8, 8, 8), rater="mean")
    with pytest.raises(ValueError, match="stage must be one of"):
        spec.transforms("test", (8, 8, 8))


def test_foreground_crop_for_native_datasets(tmp_path, nii):
    lab = np.zeros((24, 24, 24), np.uint8)
    lab[20:23, 20:23, 20:23] = 1
    base = tmp_path / "dataset" / "case_00000"
    nii(str(base / "imaging.nii.gz"), np.zeros((24, 24, 24), np.float32), spacing=(1.5, 1.5, 1.5))
    nii(str(base / "segmentation.nii.gz"), lab, spacing=(1.5, 1.5, 1.5))
    spec = get_dataset("kits23")
    tf = spec.transforms("train", roi_size=(8, 8, 8))
    item = spec.scan(str(tmp_path))[0]
    hits = []
    for s in range(40):
        tf.set_random_state(seed=s)
        d = tf(item)
        assert isinstance(d, dict) and d["image"].shape == (1, 8, 8, 8)
        hits.append(bool(d["label"].sum() > 0))
    # half the crops are centred on the foreground: ~60 % hit it (a uniform crop: ~20 %)
    assert 16 <= sum(hits) <= 36, sum(hits)
