"""Region and rater transforms on tiny arrays with hand-computed outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from calibseg.transforms import (
    AverageAnnotationsd,
    ConvertToBratsClassesd,
    ConvertToBratsClassesSoftmaxd,
    ConvertToKits23Classesd,
    ConvertToKits23ClassesSoftmaxd,
    RandomRaterd,
    RandomWeightedAverageAnnotationsd,
    SelectRaterd,
    SplitRatersd,
    rater_label_transform,
)

# one row of 5 voxels: background, kidney, tumour, cyst, (raw BraTS) 4
LABEL = np.array([[[0, 1, 2, 3]]], dtype=np.float32)  # [1, 1, 4]


def test_kits_labels_to_regions():
    out = ConvertToKits23Classesd("label")({"label": LABEL})["label"]
    # channels: background, tumour, tumour+cyst, kidney+tumour+cyst; voxels bg, kidney, tumour, cyst
    expected = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=np.float32)[
        :, None, :
    ]
    assert isinstance(out, np.ndarray) and out.shape == (4, 1, 4)
    np.testing.assert_array_equal(out, expected)
    # one-hot input gives the same regions
    onehot = (LABEL == np.arange(4)[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(
        ConvertToKits23Classesd("label")({"label": onehot})["label"], expected
    )


def test_brats_labels_to_regions_reads_raw_4():
    lab = torch.tensor([[[0, 1, 2, 3, 4]]])
    out = ConvertToBratsClassesd("label")({"label": lab})["label"]
    # channels: background, ET (3), TC (1+3), WT (1+2+3)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.float32
    )[:, None]
    assert torch.equal(out, expected)


def test_softmax_regions_sum_probabilities():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1)
    kits = ConvertToKits23ClassesSoftmaxd("pred")({"pred": p})["pred"].flatten()
    torch.testing.assert_close(kits, torch.tensor([0.1, 0.3, 0.7, 0.9]))
    brats = ConvertToBratsClassesSoftmaxd("pred")({"pred": p})["pred"].flatten()
    torch.testing.assert_close(brats, torch.tensor([0.1, 0.4, 0.6, 0.9]))
    with pytest.raises(ValueError, match="4 channels"):
        ConvertToKits23ClassesSoftmaxd("pred")({"pred": torch.ones(3, 2, 2)})


def test_softmax_regions_of_deep_supervision_lists():
    # a deep-supervision network gives one softmax map per head, at different sizes
    full = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1).expand(4, 2, 2)
    half = torch.tensor([0.7, 0.1, 0.1, 0.1]).view(4, 1, 1)
    for cls, want_full, want_half in (
        (ConvertToKits23ClassesSoftmaxd, [0.1, 0.3, 0.7, 0.9], [0.7, 0.1, 0.2, 0.3]),
        (ConvertToBratsClassesSoftmaxd, [0.1, 0.4, 0.6, 0.9], [0.7, 0.1, 0.2, 0.3]),
    ):
        out = cls("pred")({"pred": [full, half]})["pred"]
        assert isinstance(out, list) and len(out) == 2
        assert out[0].shape == (4, 2, 2) and out[1].shape == (4, 1, 1)
        torch.testing.assert_close(out[0][:, 1, 0], torch.tensor(want_full))
        torch.testing.assert_close(out[1].flatten(), torch.tensor(want_half))


def test_regions_keep_metatensor_meta():
    lab = MetaTensor(torch.tensor(LABEL), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = ConvertToKits23Classesd("label")({"label": lab})["label"]
    assert isinstance(out, MetaTensor) and out.shape == (4, 1, 4)
    assert torch.equal(out.affine, lab.affine)


def test_bad_label_channels():
    with pytest.raises(ValueError, match="expected 1 .class indices. or 4"):
        ConvertToKits23Classesd("label")({"label": np.zeros((2, 3, 3))})
    # an index beyond the classes or a fraction is one clear error (no empty channels)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\] expected .* got \[0, 5\]"):
        ConvertToKits23Classesd("label")({"label": np.array([[[0.0, 5.0]]])})
    with pytest.raises(ValueError, match="fractions"):
        ConvertToKits23Classesd("label")({"label": np.array([[[0.0, 1.5]]])})


RATERS = {
    "r1": torch.tensor([[[0, 1, 2]]]),
    "r2": torch.tensor([[[0, 1, 1]]]),
    "r3": torch.tensor([[[1, 1, 0]]]),
}


def test_average_annotations_hand_computed():
    out = AverageAnnotationsd(["r1", "r2", "r3"], "soft", num_classes=3)(RATERS)["soft"]
    expected = torch.tensor(
        [[2 / 3, 0, 1 / 3], [1 / 3, 1, 1 / 3], [0, 0, 1 / 3]], dtype=torch.float32
    )[:, None]
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="give num_classes"):
        AverageAnnotationsd(["r1", "r2"], "soft")(RATERS)


def test_average_of_binary_masks_needs_no_num_classes():
    # three raters' binary masks [1, 1, 3]: the output is the fraction of raters per voxel
    masks = {
        "a": torch.tensor([[[0, 1, 1]]]),
        "b": torch.tensor([[[0, 0, 1]]]),
        "c": torch.tensor([[[1, 0, 1]]]),
    }
    out = AverageAnnotationsd(["a", "b", "c"], "soft")(masks)
    torch.testing.assert_close(out["soft"], torch.tensor([[[1 / 3, 1 / 3, 1.0]]]))
    assert "a" in out  # rater keys are kept
    two = AverageAnnotationsd(["a", "b", "c"], "soft", num_classes=2)(masks)["soft"]
    torch.testing.assert_close(two[1:], out["soft"])
    torch.testing.assert_close(two[0], 1 - out["soft"][0])
    w = RandomWeightedAverageAnnotationsd(["a", "b", "c"], "soft")(masks)["soft"]
    assert w.shape == (1, 1, 3) and float(w[0, 0, 2]) == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="prob=0.5 is ignored"):
        RandomWeightedAverageAnnotationsd(["a", "b"], "soft", prob=0.5)


def test_random_weighted_average_is_convex_and_seeded():
    t = RandomWeightedAverageAnnotationsd(["r1", "r2", "r3"], "soft", num_classes=3)
    t.set_random_state(seed=7)
    a = t(RATERS)["soft"]
    w = np.random.RandomState(7).dirichlet(np.ones(3))
    hots = torch.stack(
        [(RATERS[k] == torch.arange(3).view(3, 1, 1)).float() for k in ("r1", "r2", "r3")]
    )
    expected = torch.tensordot(torch.tensor(w, dtype=torch.float32), hots, dims=1)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(a.sum(0), torch.ones(1, 3))
    b = t(RATERS)["soft"]
    assert not torch.allclose(a, b)  # new weights on every call
    t.set_random_state(seed=7)
    torch.testing.assert_close(t(RATERS)["soft"], a)


def test_select_and_random_rater():
    assert torch.equal(SelectRaterd("r2", "label")(RATERS)["label"], RATERS["r2"])
    t = RandomRaterd(["r1", "r2", "r3"], "label")
    t.set_random_state(seed=0)
    outs = [t(RATERS)["label"] for _ in range(30)]
    picks = [next(k for k in ("r1", "r2", "r3") if o is RATERS[k]) for o in outs]
    expected = [f"r{i + 1}" for i in np.random.RandomState(0).randint(3, size=30)]
    assert picks == expected and len(set(picks)) == 3


def test_rater_label_transform_options():
    keys = ["r1", "r2", "r3"]
    assert rater_label_transform(None, keys, 3) is None
    assert isinstance(rater_label_transform(2, keys, 3), SelectRaterd)
    assert isinstance(rater_label_transform("mean", keys, 3), AverageAnnotationsd)
    assert isinstance(rater_label_transform("random", keys, 3), RandomRaterd)
    assert isinstance(rater_label_transform("weighted", keys, 3), RandomWeightedAverageAnnotationsd)
    assert torch.equal(rater_label_transform(3, keys, 3)(RATERS)["label"], RATERS["r3"])
    with pytest.raises(ValueError, match="1..3"):
        rater_label_transform(4, keys, 3)
    with pytest.raises(ValueError, match="'mean', 'random'"):
        rater_label_transform("median", keys, 3)
    with pytest.raises(ValueError, match="needs rater labels"):
        rater_label_transform("mean", [], 3)


def test_split_raters():
    d = SplitRatersd(["rater_1", "rater_2"])({"case": "c", "raters": ["a.nii", "b.nii", "c.nii"]})
    assert d["rater_1"] == "a.nii" and d["rater_2"] == "b.nii"
    with pytest.raises(ValueError, match="3 rater labels requested"):
        SplitRatersd(["rater_1", "rater_2", "rater_3"])({"case": "c", "raters": ["a.nii"]})
