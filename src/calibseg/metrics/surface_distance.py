"""Percentile Hausdorff distance (HD95) with MONAI's definitions, computed in less time.

Same values as ``monai.metrics.compute_hausdorff_distance(percentile=...)`` (MONAI 1.6.1,
Euclidean distance, symmetric): the surface voxels of a mask are the mask minus its binary
erosion (6-connected in 3-D, 4-connected in 2-D, zero outside the image); the distance of a
surface voxel of one mask is the distance (in ``spacing`` units) to the nearest surface voxel
of the other; the result is the larger of the two directed percentiles (``torch.quantile``,
linear interpolation, float32). Both masks empty → NaN; one empty → MONAI's quantile of
infinite distances (NaN, or inf when the other mask has a single surface voxel).

The work is restricted to the bounding box of the two masks plus one voxel, surface voxels
shared by both masks are known to be at distance 0 and are not queried, and nearest
neighbours come from a KD-tree over the surface voxels (``scipy.spatial.cKDTree``), with
coordinates formed exactly as MONAI forms them so that the distances agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import binary_erosion, generate_binary_structure
from scipy.spatial import cKDTree

__all__ = ["hausdorff_distance", "compute_hausdorff_distance"]


def _box(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Bounding box of ``mask`` grown by one voxel and clipped to the image, and the offset
    from box indices to MONAI's crop indices (its crop starts one voxel before the first voxel,
    padding beyond the image); None if the mask is empty."""
    box, offset = [], []
    for ax in range(mask.ndim):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if idx.size == 0:
            return None
        start = max(int(idx[0]) - 1, 0)
        box.append(slice(start, int(idx[-1]) + 2))
        offset.append(start - (int(idx[0]) - 1))
    return tuple(box), np.array(offset, dtype=np.int64)


def _directed(
    src: np.ndarray, dst: np.ndarray, shared: np.ndarray, offset: np.ndarray, scale: np.ndarray
) -> torch.Tensor:
    """Distances (float32) from every surface voxel of ``src`` to the nearest one of ``dst``."""
    n_shared = int(shared.sum())
    query = np.argwhere(src & ~shared)
    d = np.zeros(n_shared + len(query), np.float32)
    if len(query):
        tree = cKDTree((np.argwhere(dst) + offset) * scale, leafsize=32)
        d[n_shared:] = tree.query((query + offset) * scale, k=1)[0]
    return torch.from_numpy(d)


def hausdorff_distance(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95.0,
) -> float:
    """Symmetric percentile Hausdorff distance between two binary masks ``[*spatial]``.

    Args:
        pred, gt: masks of one shape (bool, or numbers where 1 means inside, as MONAI reads
            them).
        spacing: voxel size per axis (or one number for all axes); None means 1.
        percentile: in [0, 100].

    Returns:
        The distance in ``spacing`` units (as a float32 value); NaN if both masks are empty;
        if one is empty, what MONAI gives (NaN; inf for a single surface voxel).

    Raises:
        ValueError: for masks of different shapes, a bad spacing or percentile.
    """
    p = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    g = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}.")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}.")
    p = p if p.dtype == bool else p == 1
    g = g if g.dtype == bool else g == 1
    ndim = p.ndim
    scale = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(-1)
    if scale.size == 1:
        scale = np.full(ndim, float(scale[0]))
    if scale.size != ndim or not bool(np.all(np.isfinite(scale) & (scale > 0))):
        raise ValueError(f"spacing must be {ndim} positive numbers (or one), got {spacing!r}.")
    found = _box(p | g)
    if found is None:
        return float("nan")
    box, offset = found
    pc, gc = p[box], g[box]
    structure = generate_binary_structure(ndim, 1)
    pe = pc & ~binary_erosion(pc, structure)
    ge = gc & ~binary_erosion(gc, structure)
    if not pc.any() or not gc.any():  # MONAI: the quantile of infinite distances
        inf = torch.full((int(pe.sum() + ge.sum()),), float("inf"))
        return float(torch.quantile(inf, percentile / 100))
    shared = pe & ge
    q = percentile / 100
    d_pg = torch.quantile(_directed(pe, ge, shared, offset, scale), q)
    d_gp = torch.quantile(_directed(ge, pe, shared, offset, scale), q)
    return float(torch.maximum(d_pg, d_gp))


def compute_hausdorff_distance(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    include_background: bool = False,
    percentile: float = 95.0,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Drop-in for ``monai.metrics.compute_hausdorff_distance`` (Euclidean, symmetric).

    Args:
        y_pred, y: one-hot ``[B, C, *spatial]`` masks of one shape.
        include_background: keep channel 0.
        percentile: in [0, 100].
        spacing: voxel size per spatial axis (or one number), the same for every image.

    Returns:
        ``[B, C]`` float32 distances (``C - 1`` columns without background); NaN where both
        masks are empty; MONAI's value (NaN, or inf for a single voxel) where one is.

    Raises:
        ValueError: for inputs of different shapes or fewer than 3 dims.
    """
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and "
            f"{tuple(y.shape)}."
        )
    if y_pred.ndim < 3:
        raise ValueError(f"inputs must be [B, C, *spatial], got {tuple(y_pred.shape)}.")
    if not include_background:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    b, c = y_pred.shape[:2]
    out = torch.empty(b, c, dtype=torch.float32)
    for i in range(b):
        for j in range(c):
            out[i, j] = hausdorff_distance(y_pred[i, j], y[i, j], spacing, percentile)
    return out
