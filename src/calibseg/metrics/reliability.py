"""Reliability data: per-case bins, dataset reliability histograms and pooled (micro) bins.

A *dataset reliability histogram* summarises how calibrated the individual cases are: for
each class, confidence bin ``k`` and accuracy bin ``j`` it counts the cases whose accuracy
(mean target) in confidence bin ``k`` falls into accuracy bin ``j``. A calibrated model puts
the mass on the diagonal. Row 0 is the *highest* accuracy bin, so the array can be shown
as an image with the origin at the top.
"""

from __future__ import annotations

import torch

from calibseg.binning import BinStats, bin_edges, check_num_bins

__all__ = ["calculate_heatmap_from_bins", "binning_tensor", "stats_from_binning_tensor"]


def calculate_heatmap_from_bins(
    mean_gt_per_bin: torch.Tensor, num_bins: int | None = None
) -> torch.Tensor:
    """Dataset reliability histogram from per-case accuracies.

    Args:
        mean_gt_per_bin: per-case mean target per confidence bin ``[N, C, K]``; NaN for empty bins
            (those cases are not counted in that bin).
        num_bins: number of accuracy bins ``J`` over [0, 1] (default ``K``), with the edges of
            the binning kernel (float32 ``linspace(0, 1 + eps, J + 1)``): an accuracy on an
            inner edge falls in the lower bin, as in the paper's code.

    Returns:
        ``[C, J, K]`` int64 counts of cases; row 0 = highest accuracy bin.
    """
    mean_gt = mean_gt_per_bin
    if not isinstance(mean_gt, torch.Tensor) or mean_gt.ndim != 3:
        shape = tuple(mean_gt.shape) if isinstance(mean_gt, torch.Tensor) else type(mean_gt)
        raise ValueError(f"mean_gt must be a tensor [N, C, K], got {shape}.")
    n, c, k = mean_gt.shape
    j = k if num_bins is None else num_bins
    check_num_bins(j)
    v = mean_gt.detach()
    valid = ~torch.isnan(v)
    if bool(((v < 0) | (v > 1))[valid].any()):
        raise ValueError("mean_gt must lie in [0, 1] (NaN for empty bins).")
    edges = bin_edges(j, device=v.device)[1:]
    acc = torch.where(valid, v, torch.zeros_like(v)).to(torch.float32).contiguous()
    acc_bin = torch.bucketize(acc, edges, right=False).clamp_(0, j - 1)
    row = (j - 1) - acc_bin  # row 0 = highest accuracy
    cls = torch.arange(c, device=v.device).view(1, c, 1)
    col = torch.arange(k, device=v.device).view(1, 1, k)
    flat = ((cls * j + row) * k + col)[valid]
    return torch.bincount(flat, minlength=c * j * k).view(c, j, k)


def binning_tensor(stats: BinStats) -> torch.Tensor:
    """``[B, C, 3, K]`` float64 stack of (mean_p, mean_gt, counts); NaN means for empty bins."""
    return torch.stack(stats.means(), dim=2)


def stats_from_binning_tensor(t: torch.Tensor) -> BinStats:
    """Inverse of :func:`binning_tensor`: (mean_p, mean_gt, counts) ``[..., C, 3, K]`` → BinStats.

    Counts become int64 when they are whole numbers (hard binning), float64 otherwise.
    """
    if t.ndim < 3 or t.shape[-2] != 3:
        raise ValueError(f"binning data must have shape [..., C, 3, K], got {tuple(t.shape)}.")
    t = t.to(torch.float64)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    mp, mg, w = t[..., 0, :], t[..., 1, :], t[..., 2, :]
    sp = torch.nan_to_num(mp * w, nan=0.0)
    sg = torch.nan_to_num(mg * w, nan=0.0)
    weight = w.round().long() if bool((w == w.round()).all()) else w
    return BinStats(weight, sp, sg)
