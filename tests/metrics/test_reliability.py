"""Dataset reliability histogram and ReliabilityDiagramMetric."""

import numpy as np
import pytest
import torch

from calibseg.binning import compute_bin_stats
from calibseg.metrics import (
    ReliabilityDiagramMetric,
    binning_tensor,
    calculate_heatmap_from_bins,
    stats_from_binning_tensor,
)

NAN = float("nan")


def _loop_reference(mean_gt, num_bins):
    """Loop reference: accuracy bin j holds (e_j, e_j+1] (the first also 0) with the float32
    edges e = linspace(0, 1 + eps, J + 1), i.e. a value on an inner edge counts in the lower
    bin (DESIGN's binning rule); row 0 = highest accuracy."""
    n, c, k = mean_gt.shape
    eps = float(np.finfo(np.float32).eps)
    edges = np.linspace(0.0, 1.0 + eps, num_bins + 1, dtype=np.float32)
    out = torch.zeros(c, num_bins, k)
    for ni in range(n):
        for ci in range(c):
            for ki in range(k):
                v = np.float32(mean_gt[ni, ci, ki].item())
                if np.isnan(v):
                    continue
                j = next(i for i in range(num_bins) if v <= edges[i + 1])
                out[ci, num_bins - 1 - j, ki] += 1
    return out


def test_heatmap_hand_computed():
    # 3 cases, 1 class, 2 confidence bins, 2 accuracy bins [0, .5], (.5, 1]
    mean_gt = torch.tensor([[[0.1, 0.9]], [[0.5, 1.0]], [[NAN, 0.2]]])
    h = calculate_heatmap_from_bins(mean_gt, 2)
    assert h.dtype == torch.int64
    # column 0: 0.1 and 0.5 (on the edge: lower bin) -> row 1; column 1: 0.9, 1.0 -> row 0,
    # 0.2 -> row 1
    assert h.tolist() == [[[0, 2], [2, 1]]]


def test_heatmap_matches_loop_reference_including_edges():
    g = torch.Generator().manual_seed(3)
    mean_gt = torch.rand(7, 3, 6, generator=g)
    mean_gt[0, 0] = torch.tensor([0.0, 1.0, 0.5, 1 / 6, NAN, 5 / 6])
    mean_gt[1:3, 2, 4] = NAN
    for j in (6, 4):
        h = calculate_heatmap_from_bins(mean_gt, j)
        assert h.shape == (3, j, 6)
        assert torch.equal(h.float(), _loop_reference(mean_gt, j))
        # each non-empty (case, class, bin) is counted once
        assert int(h.sum()) == int((~torch.isnan(mean_gt)).sum())


def test_heatmap_bad_input():
    with pytest.raises(ValueError, match=r"\[N, C, K\]"):
        calculate_heatmap_from_bins(torch.rand(3, 4), 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calculate_heatmap_from_bins(torch.full((1, 1, 2), 1.5), 2)
    with pytest.raises(ValueError, match="num_bins"):
        calculate_heatmap_from_bins(torch.rand(1, 1, 2), 0)


def test_binning_tensor_round_trip():
    p = torch.rand(2, 3, 50)
    y = (torch.rand_like(p) < p).float()
    s = compute_bin_stats(p, y, 7)
    t = binning_tensor(s)
    assert t.shape == (2, 3, 3, 7)
    back = stats_from_binning_tensor(t)
    assert torch.equal(back.weight, s.weight)
    torch.testing.assert_close(back.sum_p, s.sum_p)
    torch.testing.assert_close(back.sum_gt, s.sum_gt)
    with pytest.raises(ValueError, match="3, K"):
        stats_from_binning_tensor(torch.zeros(2, 4, 7))


def test_metric_aggregate_heatmap_and_pooled_bins():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 3, 10, 10, generator=g)
    y = (torch.rand(4, 3, 10, 10, generator=g) < p).float()
    m = ReliabilityDiagramMetric(num_bins=5, include_background=False, class_names=["bg", "a", "b"])
    m(p[:3], y[:3])
    m(p[3:], y[3:], case_names=["last"])
    heat = m.aggregate()
    agg = m.aggregated
    assert heat is m.heatmap
    ref = compute_bin_stats(p[:, 1:], y[:, 1:], 5)
    assert heat.shape == (2, 5, 5) and agg.shape == (2, 3, 5)
    assert torch.equal(heat.float(), _loop_reference(ref.means()[1].float(), 5))
    mp, mg, cnt = (t[0] for t in ref.total().means())
    torch.testing.assert_close(agg, torch.stack([mp, mg, cnt], dim=1))
    assert m.case_names == ["case_0", "case_1", "case_2", "last"]
    assert m.names_of_classes == ["a", "b"]


def test_metric_list_input_of_different_sizes():
    m = ReliabilityDiagramMetric(num_bins=4)
    preds = [torch.rand(2, 5, 5), torch.rand(2, 3, 7)]
    labels = [(torch.rand_like(t) < 0.5).float() for t in preds]
    m(preds, labels, case_names=["x", "y"])
    assert m.case_stats().shape == (2, 2, 4)
    assert m.case_stats().weight.sum(-1).tolist() == [[25, 25], [21, 21]]
    assert m.case_names == ["x", "y"]


def test_metric_bad_input():
    with pytest.raises(ValueError, match="output_dir"):
        ReliabilityDiagramMetric(draw_dataset_diagrams=True)
    with pytest.raises(ValueError, match="output_dir"):
        ReliabilityDiagramMetric(draw_case_diagrams=True)
    assert ReliabilityDiagramMetric().draw_dataset_diagrams is False  # no folder, no figure
    with pytest.raises(ValueError, match="3 class_names given for num_classes=2"):
        ReliabilityDiagramMetric(2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="3 channels but num_classes=2"):
        ReliabilityDiagramMetric(num_classes=2)(torch.rand(1, 3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="fmt"):
        ReliabilityDiagramMetric(fmt="jpg")
    m = ReliabilityDiagramMetric(class_names=["a", "b"])
    with pytest.raises(ValueError, match="2 class_names .* 3 channels"):
        m(torch.rand(1, 3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="case_names"):
        ReliabilityDiagramMetric()(torch.rand(2, 2, 4), torch.zeros(2, 2, 4), case_names=["a"])
    with pytest.raises(ValueError, match="no data"):
        ReliabilityDiagramMetric().aggregate()


def test_metric_draws_figures(tmp_path):
    m = ReliabilityDiagramMetric(
        num_bins=5,
        output_dir=str(tmp_path),
        draw_dataset_diagrams=True,
        draw_case_diagrams=True,
        class_names=["bg", "fg"],
        figsize=(2, 2),
        draw_case_histograms=False,
        draw_dataset_histograms=False,
    )
    p = torch.rand(2, 2, 6, 6)
    m(p, (p > 0.5).float(), case_names=["c1", "c2"])
    m.aggregate()
    names = sorted(x.rsplit("/", 1)[-1] for x in m.written)
    assert names == [
        "c1_reliability_diagram.png",
        "c2_reliability_diagram.png",
        "dataset_reliability_diagram.png",
    ]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
