"""The binning kernel: per-(image, class, bin) statistics of (probability, target) pairs.

Everything about calibration in calibseg is computed from :class:`BinStats`:
losses, metrics, reliability diagrams, dataset histograms, handlers and the evaluation
pipeline. BinStats add up over chunks, images and workers.

Semantics (shared with ``monai.metrics.calibration_binning`` from MONAI 1.6.1):
``num_bins`` equal-width bins with edges ``linspace(0, 1 + eps_float32, num_bins + 1)``;
a value is assigned with ``torch.bucketize(value, edges[1:], right=right)`` clamped to
the last bin, so with ``right=False`` a value on an inner edge falls in the lower bin.
Soft binning splits a value's unit weight between the two bins whose centres bracket it,
linearly by distance (all of it to the end bin beyond the outermost centres).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "BinStats",
    "bin_edges",
    "bin_centres",
    "compute_bin_stats",
    "binned_sums",
    "binned_means",
    "calibration_errors",
    "validate_pair",
    "DEFAULT_EMPTY_WEIGHT",
]

DEFAULT_EMPTY_WEIGHT = 0.01
_EPS32 = float(torch.finfo(torch.float32).eps)
# voxels per (b, c) processed at once by the chunked, exact path
DEFAULT_CHUNK = 1 << 21


def bin_edges(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bin edges ``[num_bins + 1]`` (float32), identical to MONAI's."""
    _check_num_bins(num_bins)
    return torch.linspace(0.0, 1.0 + _EPS32, num_bins + 1, device=device)


def bin_centres(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bin centres ``[num_bins]`` (float32): midpoints of :func:`bin_edges`."""
    e = bin_edges(num_bins, device)
    return (e[:-1] + e[1:]) / 2


def _check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")


def validate_pair(
    y_pred: torch.Tensor, y: torch.Tensor, *, check_range: bool = True, hint: str = ""
) -> None:
    """Check that ``y_pred`` and ``y`` are ``[B, C, *spatial]`` of one shape, finite, in [0, 1].

    Raises ``ValueError`` with a one-line message naming the problem.
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("y_pred and y must be torch.Tensor.")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    if y_pred.ndim < 3:
        raise ValueError(
            f"inputs must have shape [B, C, *spatial] (at least 3 dims), got {tuple(y_pred.shape)}."
        )
    if not check_range:
        return
    for name, t in (("y_pred", y_pred), ("y", y)):
        if t.dtype == torch.bool or not t.is_floating_point():
            if name == "y_pred":
                raise ValueError(f"y_pred must be a floating-point tensor, got {t.dtype}.")
            continue
        tf = t.detach()
        if not bool(torch.isfinite(tf).all()):
            raise ValueError(f"{name} contains NaN or Inf values.")
        lo, hi = torch.aminmax(tf)
        if float(lo) < 0.0 or float(hi) > 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1], got values in [{float(lo):.4g}, {float(hi):.4g}]"
                + (f"; {hint}" if hint else ".")
            )


@dataclass(frozen=True)
class BinStats:
    """Per-bin sums for B images, C classes and K bins; they add up.

    Attributes:
        weight: ``[B, C, K]`` number of values in each bin; int64 for hard binning
            (exact counts), float64 for soft binning (summed weights).
        sum_p: ``[B, C, K]`` float64 weighted sum of predicted probabilities.
        sum_gt: ``[B, C, K]`` float64 weighted sum of targets.
    """

    weight: torch.Tensor
    sum_p: torch.Tensor
    sum_gt: torch.Tensor

    @property
    def num_bins(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @classmethod
    def zeros(
        cls, batch: int, channels: int, num_bins: int, soft: bool = False, device=None
    ) -> BinStats:
        """Empty statistics ``[batch, channels, num_bins]``."""
        wdt = torch.float64 if soft else torch.int64
        z = torch.zeros(batch, channels, num_bins, dtype=torch.float64, device=device)
        return cls(z.to(wdt), z.clone(), z.clone())

    def __add__(self, other: BinStats) -> BinStats:
        if self.shape != other.shape:
            raise ValueError(f"cannot add BinStats of shapes {self.shape} and {other.shape}.")
        w = self.weight + other.weight
        return BinStats(w, self.sum_p + other.sum_p, self.sum_gt + other.sum_gt)

    def total(self) -> BinStats:
        """Sum over images: ``[1, C, K]`` (dataset-level / micro statistics)."""
        return BinStats(
            self.weight.sum(0, keepdim=True),
            self.sum_p.sum(0, keepdim=True),
            self.sum_gt.sum(0, keepdim=True),
        )

    @staticmethod
    def cat(stats: Sequence[BinStats]) -> BinStats:
        """Concatenate along the image axis."""
        if not stats:
            raise ValueError("cannot concatenate an empty sequence of BinStats.")
        return BinStats(
            torch.cat([s.weight for s in stats]),
            torch.cat([s.sum_p for s in stats]),
            torch.cat([s.sum_gt for s in stats]),
        )

    @staticmethod
    def sum(stats: Iterable[BinStats]) -> BinStats:
        """Element-wise sum of an iterable of equally shaped BinStats."""
        it = iter(stats)
        try:
            acc = next(it)
        except StopIteration:
            raise ValueError("cannot sum an empty iterable of BinStats.") from None
        for s in it:
            acc = acc + s
        return acc

    def select_classes(self, index: slice | Sequence[int]) -> BinStats:
        """Keep some classes (e.g. ``slice(1, None)`` to drop background)."""
        return BinStats(self.weight[:, index], self.sum_p[:, index], self.sum_gt[:, index])

    def means(
        self, empty_weight: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean_p, mean_gt, counts), each ``[B, C, K]`` float64; NaN means for empty bins.

        A bin is empty when its weight is ``<= 0`` or below ``empty_weight``.
        """
        w = self.weight.to(torch.float64)
        empty = (w <= 0) | (w < empty_weight)
        safe = torch.where(empty, torch.ones_like(w), w)
        nan = torch.full_like(w, float("nan"))
        mean_p = torch.where(empty, nan, self.sum_p / safe)
        mean_gt = torch.where(empty, nan, self.sum_gt / safe)
        return mean_p, mean_gt, w

    def errors(self, empty_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """ECE, ACE and MCE per image and class: ``{"ece", "ace", "mce"}``, each ``[B, C]``."""
        return calibration_errors(*self.means(empty_weight))

    def to_dict(self) -> dict[str, list]:
        """Plain-Python form (JSON/pickle friendly)."""
        return {
            "weight": self.weight.tolist(),
            "sum_p": self.sum_p.tolist(),
            "sum_gt": self.sum_gt.tolist(),
            "soft": bool(self.weight.is_floating_point()),
        }

    @classmethod
    def from_dict(cls, d: dict) -> BinStats:
        wdt = torch.float64 if d.get("soft") else torch.int64
        return cls(
            torch.tensor(d["weight"], dtype=wdt),
            torch.tensor(d["sum_p"], dtype=torch.float64),
            torch.tensor(d["sum_gt"], dtype=torch.float64),
        )


def calibration_errors(
    mean_p: torch.Tensor, mean_gt: torch.Tensor, counts: torch.Tensor
) -> dict[str, torch.Tensor]:
    """ECE (count-weighted), ACE (unweighted) and MCE (max) of |mean_p − mean_gt| over
    non-empty bins (NaN means). Inputs ``[..., K]``; outputs ``[...]``, NaN if all bins empty.
    """
    gap = (mean_p - mean_gt).abs()
    valid = ~torch.isnan(gap)
    gap0 = torch.where(valid, gap, torch.zeros_like(gap))
    w = torch.where(valid, counts.to(gap.dtype), torch.zeros_like(gap))
    n_valid = valid.sum(-1)
    wsum = w.sum(-1)
    nan = torch.full_like(wsum, float("nan"))
    ece = torch.where(wsum > 0, (gap0 * w).sum(-1) / wsum.clamp_min(1e-300), nan)
    ace = torch.where(n_valid > 0, gap0.sum(-1) / n_valid.clamp_min(1), nan)
    neg = torch.where(valid, gap, torch.full_like(gap, -1.0))
    mce = torch.where(n_valid > 0, neg.amax(-1), nan)
    return {"ece": ece, "ace": ace, "mce": mce}


def _hard_index(p: torch.Tensor, num_bins: int, right: bool) -> torch.Tensor:
    """Bin index of every value of ``p`` (int64, same shape)."""
    upper = bin_edges(num_bins, p.device)[1:]
    return torch.bucketize(p, upper, right=right).clamp_(max=num_bins - 1)


def _soft_weights(p: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bin index and weight of the lower bin for soft binning (the upper bin gets 1 − w)."""
    width = (1.0 + _EPS32) / num_bins
    t = p / width - 0.5  # position in units of bins relative to the first centre
    lo = torch.floor(t).clamp(0, max(num_bins - 2, 0))
    frac = (t - lo).clamp(0.0, 1.0)
    if num_bins == 1:
        frac = torch.zeros_like(frac)
    return lo.long(), 1.0 - frac


def binned_sums(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable per-bin sums (weight, sum_p, sum_gt), each ``[B, C, K]`` in the dtype of
    ``y_pred`` (float32 for half inputs). Gradients flow to ``y_pred`` (and ``y`` if it requires
    grad). One vectorised pass over the whole tensor; no loop over batch or class.
    """
    _check_num_bins(num_bins)
    b, c = y_pred.shape[:2]
    p = y_pred.reshape(b, c, -1)
    if p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    g = y.reshape(b, c, -1).to(p.dtype)
    base = (torch.arange(b * c, device=p.device) * num_bins).view(b, c, 1)
    out = torch.zeros(3, b * c * num_bins, dtype=p.dtype, device=p.device)
    if not soft:
        idx = (_hard_index(p.detach(), num_bins, right) + base).reshape(-1)
        ones = torch.ones_like(p).reshape(-1)
        w = out[0].index_add(0, idx, ones)
        sp = out[1].index_add(0, idx, p.reshape(-1))
        sg = out[2].index_add(0, idx, g.reshape(-1))
    else:
        lo, wlo = _soft_weights(p, num_bins)
        idx_lo = (lo + base).reshape(-1)
        idx_hi = (torch.clamp(lo + 1, max=num_bins - 1) + base).reshape(-1)
        wlo = wlo.reshape(-1)
        whi = 1.0 - wlo
        pf, gf = p.reshape(-1), g.reshape(-1)
        w = out[0].index_add(0, idx_lo, wlo).index_add(0, idx_hi, whi)
        sp = out[1].index_add(0, idx_lo, wlo * pf).index_add(0, idx_hi, whi * pf)
        sg = out[2].index_add(0, idx_lo, wlo * gf).index_add(0, idx_hi, whi * gf)
    shape = (b, c, num_bins)
    return w.view(shape), sp.view(shape), sg.view(shape)


def binned_means(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
    empty_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable (mean_p, mean_gt, counts), each ``[B, C, K]``; NaN means for empty bins.

    ``empty_weight`` defaults to 0 for hard and :data:`DEFAULT_EMPTY_WEIGHT` for soft binning.
    """
    if empty_weight is None:
        empty_weight = DEFAULT_EMPTY_WEIGHT if soft else 0.0
    w, sp, sg = binned_sums(y_pred, y, num_bins, right, soft)
    empty = (w <= 0) | (w < empty_weight)
    safe = torch.where(empty, torch.ones_like(w), w)
    nan = torch.full_like(w, float("nan"))
    return torch.where(empty, nan, sp / safe), torch.where(empty, nan, sg / safe), w


@torch.no_grad()
def compute_bin_stats(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    validate: bool = True,
) -> BinStats:
    """Exact per-bin statistics of ``y_pred`` vs ``y`` (both ``[B, C, *spatial]``).

    Integer counts (hard) and float64 sums; processed in chunks of ``chunk_size`` voxels
    along the flattened spatial axis so the extra memory stays bounded.
    """
    _check_num_bins(num_bins)
    if validate:
        validate_pair(y_pred, y)
    b, c = y_pred.shape[:2]
    p = y_pred.reshape(b, c, -1)
    g = y.reshape(b, c, -1)
    n = p.shape[-1]
    acc = BinStats.zeros(b, c, num_bins, soft=soft, device=y_pred.device)
    for start in range(0, max(n, 1), chunk_size):
        pc = p[..., start : start + chunk_size].to(torch.float32)
        gc = g[..., start : start + chunk_size].to(torch.float64)
        if not soft:
            # counts and sums on the same indices but accumulated in int64 / float64
            idx = _hard_index(pc, num_bins, right)
            base = (torch.arange(b * c, device=pc.device) * num_bins).view(b, c, 1)
            flat = (idx + base).reshape(-1)
            size = b * c * num_bins
            cnt = torch.bincount(flat, minlength=size).view(b, c, num_bins)
            sp = torch.zeros(size, dtype=torch.float64, device=pc.device).index_add_(
                0, flat, pc.reshape(-1).to(torch.float64)
            )
            sg = torch.zeros(size, dtype=torch.float64, device=pc.device).index_add_(
                0, flat, gc.reshape(-1)
            )
            acc = acc + BinStats(cnt, sp.view(b, c, num_bins), sg.view(b, c, num_bins))
        else:
            w, sp, sg = binned_sums(pc.to(torch.float64), gc, num_bins, right, soft)
            acc = acc + BinStats(w, sp, sg)
    return acc
