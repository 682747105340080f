"""HD95 of calibseg.metrics.surface_distance equals MONAI's compute_hausdorff_distance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance as monai_hd
from scipy.ndimage import gaussian_filter

from calibseg.metrics.surface_distance import compute_hausdorff_distance, hausdorff_distance


def _monai(pred: torch.Tensor, gt: torch.Tensor, spacing, percentile=95.0) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return monai_hd(pred, gt, include_background=True, percentile=percentile, spacing=spacing)


def _blobs(rng: np.random.Generator, shape, n: int, level: float) -> np.ndarray:
    """n random smooth masks (thresholded blurred noise: several components, holes)."""
    noise = rng.normal(size=(n, *shape))
    return np.stack([gaussian_filter(x, 2.0) > level for x in noise])


@pytest.mark.parametrize(
    "shape,spacing",
    [
        ((24, 20, 16), None),
        ((24, 20, 16), [0.7, 1.3, 2.5]),
        ((30, 26), [0.5, 1.7]),
        ((17, 19, 23), [1.0, 1.0, 3.0]),
    ],
)
@pytest.mark.parametrize("percentile", [95.0, 100.0, 50.0])
def test_matches_monai_on_random_shapes(shape, spacing, percentile) -> None:
    rng = np.random.default_rng(len(shape) * 100 + int(percentile))
    pred = torch.from_numpy(_blobs(rng, shape, 4, 0.05)).float()[None]
    gt = torch.from_numpy(_blobs(rng, shape, 4, 0.1)).float()[None]
    gt[0, 3] = torch.from_numpy(np.roll(pred[0, 3].numpy(), 2, axis=0))  # mostly shared surface
    ref = _monai(pred, gt, spacing, percentile)
    ours = compute_hausdorff_distance(
        pred, gt, include_background=True, percentile=percentile, spacing=spacing
    )
    assert ours.dtype == ref.dtype == torch.float32
    assert torch.equal(ours, ref), (ours, ref)


def test_masks_touching_the_image_border_and_full_masks() -> None:
    """Surface voxels on the image border (zero outside the image) and a full mask."""
    pred = torch.zeros(1, 3, 12, 10, 9)
    gt = torch.zeros(1, 3, 12, 10, 9)
    pred[0, 0, :5], gt[0, 0, :7] = 1, 1
    pred[0, 1] = 1
    gt[0, 1, 3:8, 2:6, 1:4] = 1
    pred[0, 2, 0, 0, 0], gt[0, 2, 11, 9, 8] = 1, 1
    sp = [1.5, 0.8, 2.0]
    assert torch.equal(compute_hausdorff_distance(pred, gt, True, spacing=sp), _monai(pred, gt, sp))


def test_empty_masks_follow_monai() -> None:
    pred = torch.zeros(1, 3, 8, 8, 8)
    gt = torch.zeros(1, 3, 8, 8, 8)
    pred[0, 1, 2:4, 2:4, 2:4] = 1  # gt empty
    gt[0, 2, 2:4, 2:4, 2:4] = 1  # pred empty
    pred[0, 0, 5, 5, 5] = 1  # gt empty, a single predicted voxel
    ours = compute_hausdorff_distance(pred, gt, include_background=True)
    ref = _monai(pred, gt, None)
    both_empty = compute_hausdorff_distance(gt[:, :1] * 0, gt[:, :1] * 0, include_background=True)
    assert (
        torch.isnan(both_empty).all()
        and torch.isnan(_monai(gt[:, :1] * 0, gt[:, :1] * 0, None)).all()
    )
    torch.testing.assert_close(ours, ref, equal_nan=True, rtol=0, atol=0)


def test_hand_computed_distance() -> None:
    """Two single voxels 3 voxels apart along an axis of spacing 2: distance 6."""
    pred, gt = np.zeros((5, 9), bool), np.zeros((5, 9), bool)
    pred[2, 1], gt[2, 4] = True, True
    assert hausdorff_distance(pred, gt, spacing=[1.0, 2.0]) == 6.0


def test_background_dropped_and_bad_input() -> None:
    x = torch.zeros(2, 3, 6, 6)
    x[:, :, 1:3, 1:3] = 1
    assert compute_hausdorff_distance(x, x).shape == (2, 2)
    with pytest.raises(ValueError, match="same shape"):
        compute_hausdorff_distance(x, x[:, :2])
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(x[0, 0], x[0, 0], spacing=[1.0, 2.0, 3.0])
