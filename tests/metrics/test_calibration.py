"""Calibration metrics: hand-computed values and MONAI 1.6.1 as the reference."""

import monai.metrics as mm
import pytest
import torch

from calibseg.binning import MAX_NUM_BINS, bin_edges, compute_bin_stats
from calibseg.metrics import (
    CalibrationAccumulator,
    CalibrationErrorMetric,
    calibration_binning,
    macro_micro_errors,
)

REDUCTIONS = ("expected", "average", "maximum")


def _random_pair(b=3, c=4, shape=(9, 7, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(b, c, *shape, generator=g)
    y = (torch.rand(b, c, *shape, generator=g) < p).float()
    return p, y


def _edge_pair(num_bins=10):
    """Values exactly on every inner bin edge, on 0 and on 1, plus a class absent from y."""
    p, y = _random_pair(2, 3, (6, 11))
    e = bin_edges(num_bins)[:-1]  # float32 edges as MONAI builds them; the last is 1 + eps
    p[0, 0, 0, :num_bins] = e
    p[0, 1] = 0.0
    p[1, 1] = 1.0
    p[1, 0, 0, :3] = torch.tensor([0.5, 0.25, 0.75])
    y[1, 2] = 0.0  # empty class
    return p, y


def test_perfect_predictor_has_zero_error():
    y = (torch.rand(2, 3, 8, 8) > 0.5).float()
    m = CalibrationErrorMetric(num_bins=10, metric_reduction="none")
    for red in REDUCTIONS:
        m.calibration_reduction = type(m.calibration_reduction)(red)
        m.reset()
        m(y.clone(), y)
        assert torch.equal(m.aggregate(), torch.zeros(2, 3))


def test_constant_prediction_on_half_positive_mask():
    # 0.7 everywhere, half the voxels positive: one bin, gap |0.7 - 0.5| = 0.2
    y = torch.zeros(1, 1, 4, 4)
    y[..., :2, :] = 1
    p = torch.full_like(y, 0.7)
    for red in REDUCTIONS:
        m = CalibrationErrorMetric(num_bins=20, calibration_reduction=red)
        m(p, y)
        assert m.aggregate().item() == pytest.approx(0.2, abs=1e-6)


def test_two_bin_hand_computed_errors():
    # 8 voxels at 0.25 with 2 positives (gap 0), 4 voxels at 0.85 with 2 positives (gap 0.35)
    p = torch.tensor([0.25] * 8 + [0.85] * 4).view(1, 1, 12)
    y = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=torch.float32).view(1, 1, 12)
    expected = {"expected": 0.35 * 4 / 12, "average": 0.35 / 2, "maximum": 0.35}
    for red, value in expected.items():
        m = CalibrationErrorMetric(num_bins=10, calibration_reduction=red)
        m(p, y)
        assert m.aggregate().item() == pytest.approx(value, abs=1e-6)
    mean_p, mean_gt, counts = calibration_binning(p, y, num_bins=10)
    assert counts[0, 0].tolist() == [0, 0, 8, 0, 0, 0, 0, 0, 4, 0]
    empty = counts[0, 0] == 0
    assert torch.isnan(mean_p[0, 0][empty]).all() and torch.isnan(mean_gt[0, 0][empty]).all()
    assert mean_gt[0, 0, 8].item() == pytest.approx(0.5)


@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("maker", [_random_pair, _edge_pair])
def test_calibration_binning_matches_monai(maker, right):
    p, y = maker()
    ours = calibration_binning(p, y, num_bins=10, right=right)
    ref = mm.calibration_binning(p, y, num_bins=10, right=right)
    assert all(t.dtype == torch.float32 and t.shape == (p.shape[0], p.shape[1], 10) for t in ours)
    assert torch.equal(ours[2], ref[2])  # identical bin assignment, edges included
    for a, b in zip(ours[:2], ref[:2], strict=True):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, equal_nan=True)


def test_edge_values_follow_bucketize_rule():
    k = 4
    p = torch.cat([bin_edges(k)[:-1], torch.tensor([1.0])]).view(1, 1, -1)  # 0, .25, .5, .75, 1
    y = torch.zeros_like(p)
    low = calibration_binning(p, y, num_bins=k, right=False)[2][0, 0]
    high = calibration_binning(p, y, num_bins=k, right=True)[2][0, 0]
    assert low.tolist() == [2, 1, 1, 1]  # right=False: a value on an inner edge goes down
    assert high.tolist() == [1, 1, 1, 2]  # right=True: it goes up


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_metric_matches_monai_on_random_edge_and_empty_inputs(reduction, include_background):
    batches = [_random_pair(seed=1), _edge_pair(), _random_pair(1, 4, (5, 5), seed=2)]
    batches[2][1][0, 3] = 0  # another empty class
    for mred in ("none", "mean", "mean_batch", "sum_channel"):
        kw = dict(
            num_bins=10,
            include_background=include_background,
            calibration_reduction=reduction,
            metric_reduction=mred,
            get_not_nans=True,
        )
        ours, ref = CalibrationErrorMetric(**kw), mm.CalibrationErrorMetric(**kw)
        for p, y in batches:
            # MONAI expects at least as many channels for each batch: keep C equal
            ours(p[:, :3], y[:, :3])
            ref(p[:, :3], y[:, :3])
        (f1, n1), (f2, n2) = ours.aggregate(), ref.aggregate()
        torch.testing.assert_close(f1, f2, rtol=0, atol=1e-6, equal_nan=True)
        assert torch.equal(n1, n2)


def test_image_without_voxels_is_refused_and_nothing_is_kept():
    m = CalibrationErrorMetric(num_bins=5, metric_reduction="none")
    with pytest.raises(ValueError, match="empty batch"):
        m(torch.empty(1, 2, 0), torch.empty(1, 2, 0))
    m(torch.full((1, 2, 4), 0.7), torch.tensor([[[1.0, 1, 0, 0], [1, 1, 1, 1]]]))
    m.metric_reduction = "mean_batch"
    torch.testing.assert_close(m.aggregate(), torch.tensor([0.2, 0.3]))


@pytest.mark.parametrize(
    "p, y, match",
    [
        (torch.rand(1, 2, 4), torch.rand(1, 3, 4), "same shape"),
        (torch.full((1, 2, 4), 1.5), torch.zeros(1, 2, 4), r"\[0, 1\]"),
        (torch.full((1, 2, 4), float("nan")), torch.zeros(1, 2, 4), "NaN"),
    ],
)
def test_bad_input_raises_one_clear_error(p, y, match):
    with pytest.raises(ValueError, match=match):
        CalibrationErrorMetric()(p, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="calibration_reduction"):
        CalibrationErrorMetric(calibration_reduction="median")
    with pytest.raises(ValueError, match="metric_reduction"):
        CalibrationErrorMetric(metric_reduction="max")
    with pytest.raises(ValueError, match="num_bins"):
        CalibrationErrorMetric(num_bins=0)
    with pytest.raises(ValueError, match="no data"):
        CalibrationErrorMetric().aggregate()


def test_accumulator_micro_equals_pooled_voxels_and_macro_equals_mean():
    cases = [_random_pair(1, 3, (6, 6), seed=s) for s in range(5)]
    acc = CalibrationAccumulator(num_bins=8, include_background=False)
    acc.update(torch.cat([c[0] for c in cases[:2]]), torch.cat([c[1] for c in cases[:2]]))
    for p, y in cases[2:]:
        acc.update(p, y)
    res = acc.result()
    assert acc.num_cases == 5 and acc.case_stats.shape == (5, 2, 8)
    # micro: all voxels of all cases as one image (cases side by side along a spatial axis)
    p_all = torch.cat([c[0][:, 1:] for c in cases], dim=-1)
    y_all = torch.cat([c[1][:, 1:] for c in cases], dim=-1)
    pooled = compute_bin_stats(p_all, y_all, num_bins=8).errors()
    # macro: mean of MONAI's per-image values
    for red, key in zip(REDUCTIONS, ("ece", "ace", "mce"), strict=True):
        torch.testing.assert_close(res["micro"][key], pooled[key][0])
        ref = mm.CalibrationErrorMetric(8, False, red, "mean_batch")
        for p, y in cases:
            ref(p, y)
        torch.testing.assert_close(res["macro"][key].float(), ref.aggregate(), atol=1e-6, rtol=0)
    same = macro_micro_errors(acc.case_stats)
    for key in ("ece", "ace", "mce"):
        torch.testing.assert_close(same["macro"][key], res["macro"][key])
        torch.testing.assert_close(same["micro"][key], res["micro"][key])


def test_accumulator_errors():
    acc = CalibrationAccumulator(num_bins=4, keep_cases=False)
    with pytest.raises(ValueError, match="empty"):
        acc.result()
    acc.update(*_random_pair(1, 2, (3,)))
    with pytest.raises(ValueError, match="keep_cases"):
        _ = acc.case_stats
    with pytest.raises(ValueError, match="classes"):
        acc.update(*_random_pair(1, 3, (3,)))
    with pytest.raises(ValueError, match="bins"):
        acc.add(compute_bin_stats(*_random_pair(1, 2, (3,)), num_bins=5))


def _entry_points():
    """Every public consumer of the binning, as f(y_pred, y, num_bins)."""
    from calibseg.binning import binned_sums
    from calibseg.handlers.binning import bin_output
    from calibseg.losses import (
        HardL1ACELoss,
        SoftL1ACELoss,
        hard_binned_calibration,
        soft_binned_calibration,
    )
    from calibseg.metrics import ReliabilityDiagramMetric

    def acc(p, y, k):
        CalibrationAccumulator(num_bins=k).update(p, y)

    return {
        "compute_bin_stats": lambda p, y, k: compute_bin_stats(p, y, num_bins=k),
        "binned_sums": lambda p, y, k: binned_sums(p, y, num_bins=k),
        "calibration_binning": lambda p, y, k: calibration_binning(p, y, num_bins=k),
        "CalibrationErrorMetric": lambda p, y, k: CalibrationErrorMetric(num_bins=k)(p, y),
        "CalibrationAccumulator": acc,
        "ReliabilityDiagramMetric": lambda p, y, k: ReliabilityDiagramMetric(num_bins=k)(p, y),
        "BinningDataHandler": lambda p, y, k: bin_output(p, y, k, False),
        "hard_binned_calibration": lambda p, y, k: hard_binned_calibration(p, y, num_bins=k),
        "soft_binned_calibration": lambda p, y, k: soft_binned_calibration(p, y, num_bins=k),
        "HardL1ACELoss": lambda p, y, k: HardL1ACELoss(num_bins=k)(p, y),
        "SoftL1ACELoss": lambda p, y, k: SoftL1ACELoss(num_bins=k)(p, y),
    }


# binned_sums is the raw differentiable kernel under the losses, which check floating ranges
# themselves (one pass over the data, not two); integer targets are checked everywhere
@pytest.mark.parametrize(
    "name, dtype",
    [
        (name, dtype)
        for name in sorted(_entry_points())
        for dtype in (torch.uint8, torch.int64, torch.float32)
        if not (name == "binned_sums" and dtype.is_floating_point)
    ],
)
def test_targets_outside_unit_range_are_refused_everywhere(name, dtype):
    # class indices given where one-hot targets are expected: values up to 2
    p = torch.full((1, 2, 4), 0.5)
    y = torch.tensor([[[0, 1, 2, 2], [1, 0, 2, 0]]]).to(dtype)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        _entry_points()[name](p, y, 10)


@pytest.mark.parametrize("name", sorted(_entry_points()))
@pytest.mark.parametrize("shape", [(0, 2, 4), (1, 2, 0)])
def test_empty_batch_is_one_clear_error_everywhere(name, shape):
    with pytest.raises(ValueError, match="empty batch"):
        _entry_points()[name](torch.rand(shape), torch.zeros(shape), 10)


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_num_bins_is_capped_everywhere(name):
    p, y = torch.rand(1, 2, 4), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=f"at most {MAX_NUM_BINS}"):
        _entry_points()[name](p, y, MAX_NUM_BINS + 1)
    with pytest.raises(ValueError, match="num_bins"):
        _entry_points()[name](p, y, 0)


def test_integer_bool_and_float_targets_in_range_agree():
    # hand: one bin [0.5, 0.6) holding all 4 voxels, p = 0.5; targets 1, 1, 0, 0 → gap 0
    p = torch.full((1, 1, 4), 0.5)
    y = torch.tensor([[[1, 1, 0, 0]]])
    for t in (y, y.bool(), y.to(torch.uint8), y.float()):
        assert float(CalibrationErrorMetric(num_bins=10)(p, t)) == pytest.approx(0.0)
