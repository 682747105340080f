"""The binning kernel: per-(image, class, bin) statistics of (probability, target) pairs.

Everything about calibration in calibseg is computed from :class:`BinStats`:
losses, metrics, reliability diagrams, dataset histograms, handlers and the evaluation
pipeline. BinStats add up over chunks, images and workers.

Semantics (shared with ``monai.metrics.calibration_binning`` from MONAI 1.6.1):
``num_bins`` equal-width bins with edges ``linspace(0, 1 + eps_float32, num_bins + 1)``;
a value is assigned with ``torch.bucketize(value, edges[1:], right=right)`` clamped to
the last bin, so with ``right=False`` a value on an inner edge falls in the lower bin.
Soft binning splits a value's unit weight between the two bins whose centres bracket it,
linearly by distance (all of it to the end bin beyond the outermost centres). The bin of a
value is decided on its float32 rounding (as MONAI does), whatever the input dtype.

On CPU the work is done by fused, parallel numba kernels (:mod:`calibseg._kernels`,
imported on first use and cached on disk), which read the tensors in place (any strides, half
and integer dtypes); CUDA tensors use the vectorised torch path.
Set ``CALIBSEG_NO_NUMBA=1`` to force the torch path everywhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

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
    "check_num_bins",
    "MAX_NUM_BINS",
    "DEFAULT_EMPTY_WEIGHT",
]

DEFAULT_EMPTY_WEIGHT = 0.01
_EPS32 = float(torch.finfo(torch.float32).eps)
# values (over all images and classes) converted/copied at once when inputs need a
# dtype conversion or are not contiguous; bounds the extra memory
DEFAULT_CHUNK = 1 << 20
# the kernels' bucketize guess is within one bin of the truth far beyond this
_MAX_KERNEL_BINS = 1 << 16
# the largest binning accepted anywhere: finer than float16 resolution, and [B, C, K] statistics
# (or a [C, K, K] dataset histogram) beyond it only exhaust memory
MAX_NUM_BINS = 1 << 16
_KERNEL_P = (torch.float32, torch.float64)


def bin_edges(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bin edges ``[num_bins + 1]`` (float32), identical to MONAI's."""
    check_num_bins(num_bins)
    return torch.linspace(0.0, 1.0 + _EPS32, num_bins + 1, device=device)


def bin_centres(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bin centres ``[num_bins]`` (float32): midpoints of :func:`bin_edges`."""
    e = bin_edges(num_bins, device)
    return (e[:-1] + e[1:]) / 2


def check_num_bins(num_bins: int) -> int:
    """``num_bins`` if it is an integer in ``[1, MAX_NUM_BINS]``, else ``ValueError``."""
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}.")
    if num_bins > MAX_NUM_BINS:
        raise ValueError(
            f"num_bins must be at most {MAX_NUM_BINS}, got {num_bins}; calibration needs far "
            "fewer bins (typically 10-100)."
        )
    return num_bins


def validate_pair(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    *,
    check_range: bool = True,
    hint: str = "",
    check_int: bool = True,
) -> None:
    """Check that ``y_pred`` and ``y`` are ``[B, C, *spatial]`` of one shape, finite, in [0, 1].

    The one input check of every binning consumer (kernels, metrics, losses, handlers): an
    empty batch (no values) is refused, and integer targets are range-checked (one min/max
    pass) unless ``check_int=False`` (for callers whose kernel pass counts them);
    ``check_range=False`` skips the floating-point checks, which the kernels fold into their
    pass. Raises ``ValueError`` with a one-line message naming the problem.
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
    if y_pred.numel() == 0:
        raise ValueError(f"empty batch: inputs of shape {tuple(y_pred.shape)} hold no values.")
    if check_int and y.dtype != torch.bool and not y.is_floating_point():
        lo, hi = (int(v) for v in torch.aminmax(y))
        if lo < 0 or hi > 1:
            raise ValueError(
                f"target must lie in [0, 1], got integer values in [{lo}, {hi}]; give one-hot "
                "targets (class indices [B, 1, *spatial] → monai.networks.one_hot)."
            )
    if not check_range:
        return
    for name, t in (("y_pred", y_pred), ("y", y)):
        if t.dtype == torch.bool or not t.is_floating_point():
            if name == "y_pred":
                raise ValueError(f"y_pred must be a floating-point tensor, got {t.dtype}.")
            continue
        tf = t.detach()
        if tf.numel() == 0:
            continue
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

    def means(self, empty_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    """Bin index of every value of ``p`` (int64, same shape), decided on float32 values."""
    upper = bin_edges(num_bins, p.device)[1:]
    return torch.bucketize(p.float(), upper, right=right).clamp_(max=num_bins - 1)


def _soft_weights(p: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bin index and weight of the lower bin for soft binning (the upper bin gets 1 − w)."""
    width = (1.0 + _EPS32) / num_bins
    t = p / width - 0.5  # position in units of bins relative to the first centre
    lo = torch.floor(t).clamp(0, max(num_bins - 2, 0))
    frac = (t - lo).clamp(0.0, 1.0)
    if num_bins == 1:
        frac = torch.zeros_like(frac)
    return lo.long(), 1.0 - frac


# ----------------------------------------------------------------------------- numba glue

_KERNELS: ModuleType | None = None


def _kernels() -> ModuleType | None:
    """The numba kernel module, imported on first use; None if numba is disabled/unavailable."""
    global _KERNELS
    if os.environ.get("CALIBSEG_NO_NUMBA", "") not in ("", "0"):
        return None
    if _KERNELS is None:
        try:
            from calibseg import _kernels as kern
        except ImportError:  # pragma: no cover - numba is a hard dependency
            return None
        _KERNELS = kern
    return _KERNELS


def _use_kernels(y_pred: torch.Tensor, y: torch.Tensor, num_bins: int) -> ModuleType | None:
    if y_pred.device.type != "cpu" or y.device.type != "cpu" or num_bins > _MAX_KERNEL_BINS:
        return None
    return _kernels()


_EDGE_CACHE: dict[tuple[int, bool], tuple] = {}


def _kernel_edges(kern: ModuleType, num_bins: int, right: bool) -> tuple:
    key = (num_bins, right)
    if key not in _EDGE_CACHE:
        _EDGE_CACHE[key] = kern.hard_edges(num_bins, bin_edges(num_bins)[1:].numpy(), right)
    return _EDGE_CACHE[key]


def _inv_width(num_bins: int) -> float:
    return num_bins / (1.0 + _EPS32)


_HALF_KINDS = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _kernel_array(kern: ModuleType, t: torch.Tensor) -> tuple | None:
    """``(source, dims)``: a kernel source reading ``t``'s own storage in place (no copy, any
    strides) as ``[B, C, N]``, and ``dims = (B, C, N)``; None when the spatial dims of ``t``
    cannot be merged into one stride. Float32/float64 are read as stored, float16/bfloat16 as
    16-bit patterns, bool and integers as unsigned integers of their width.
    """
    b, c = t.shape[:2]
    try:
        v = t.detach().view(b, c, -1)
    except RuntimeError:  # e.g. a crop of a larger volume: strides of the spatial dims differ
        return None
    strides = v.stride()
    extent = 1 + sum((n - 1) * st for n, st in zip(v.shape, strides, strict=True))
    flat = v.as_strided((extent,), (1,))  # the storage from [0, 0, 0] to the last element
    dims = tuple(v.shape)
    kind = _HALF_KINDS.get(t.dtype)
    if kind is not None:
        return kern.half_source(flat.view(torch.uint16).numpy(), kind, strides), dims
    if t.dtype in _KERNEL_P:
        return kern.float_source(flat.numpy(), strides), dims
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"unsupported dtype {t.dtype}.")
    return kern.byte_source(flat.view(torch.uint8).numpy(), t.element_size(), strides), dims


def _kernel_dest(kern: ModuleType, t: torch.Tensor) -> tuple | None:
    """A kernel destination writing ``t`` (float32/float64) in place, or None (as above)."""
    b, c = t.shape[:2]
    try:
        v = t.view(b, c, -1)
    except RuntimeError:
        return None
    extent = 1 + sum((n - 1) * st for n, st in zip(v.shape, v.stride(), strict=True))
    return kern.dest(v.as_strided((extent,), (1,)).numpy(), v.stride())


def _span(kern: ModuleType, dims: tuple, *strides: tuple) -> int:
    """Voxels of one class visited before the next: one tile if any array is stored with its
    classes closer in memory than its voxels (channel-last), else a whole block (row order)."""
    if dims[1] > 1 and dims[2] > 1 and any(abs(s[1]) < abs(s[2]) for s in strides):
        return kern.TILE
    return kern.block_voxels(dims[1])


def _strides(src: tuple) -> tuple:
    return src[-3:]


def _slabs(
    y_pred: torch.Tensor, y: torch.Tensor, chunk_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous copies of ``(y_pred, y)`` in slabs of the first spatial axis, each about
    ``chunk_size`` values, for inputs whose spatial dims cannot be viewed as one axis."""
    b, c = y_pred.shape[:2]
    spatial = y_pred.shape[2:]
    per_slice = b * c * max(1, math.prod(spatial[1:]))
    step = max(1, chunk_size // per_slice)
    for s in range(0, spatial[0], step):
        yield y_pred[:, :, s : s + step].contiguous(), y[:, :, s : s + step].contiguous()


def _zero_sums(b: int, c: int, num_bins: int, soft: bool) -> tuple[torch.Tensor, ...]:
    """Zeroed ``[B, C, K]`` weight (int64 counts, float64 soft weights), sum_p, sum_gt."""
    w = torch.zeros(b, c, num_bins, dtype=torch.float64 if soft else torch.int64)
    return w, torch.zeros(w.shape, dtype=torch.float64), torch.zeros(w.shape, dtype=torch.float64)


def _kernel_pass(
    kern: ModuleType,
    dims: tuple,
    p_src: tuple,
    y_src: tuple,
    num_bins: int,
    right: bool,
    soft: bool,
    outs: tuple[torch.Tensor, ...],
) -> tuple[int, int]:
    """One fused binning pass of the sources ``p_src, y_src`` (shape ``dims``) adding into the
    ``[B, C, K]`` tensors ``outs`` (:func:`_zero_sums`); the numbers of values of p and y
    outside [0, 1] or NaN."""
    span = _span(kern, dims, _strides(p_src), _strides(y_src))
    arrays = tuple(t.numpy() for t in outs)
    if soft:
        args = (_inv_width(num_bins), num_bins, *arrays, span)
        bp, by = kern.soft_hist(dims, p_src, y_src, *args)
    else:
        lo, hi = _kernel_edges(kern, num_bins, right)
        bp, by = kern.hard_hist(dims, p_src, y_src, lo, hi, *arrays, span)
    return int(bp), int(by)


def _kernel_bin_stats(
    kern: ModuleType,
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int,
    right: bool,
    soft: bool,
    chunk_size: int,
) -> tuple[BinStats, int, int]:
    """BinStats via the numba kernels, plus the numbers of out-of-range/NaN values in p and y.

    Inputs are read in place whatever their strides and dtypes; only inputs whose spatial dims
    cannot be merged into one axis (crops of a larger volume) are copied, in slabs of about
    ``chunk_size`` values.
    """
    outs = _zero_sums(*y_pred.shape[:2], num_bins, soft)
    ap, ay = _kernel_array(kern, y_pred), _kernel_array(kern, y)
    pieces = [(ap, ay)] if ap is not None and ay is not None else None
    if pieces is None:
        pieces = (
            (_kernel_array(kern, pc), _kernel_array(kern, yc))
            for pc, yc in _slabs(y_pred, y, chunk_size)
        )
    bad_p = bad_y = 0
    for (p_src, dims), (y_src, _) in pieces:
        bp, by = _kernel_pass(kern, dims, p_src, y_src, num_bins, right, soft, outs)
        bad_p += bp
        bad_y += by
    return BinStats(*outs), bad_p, bad_y


class _BinnedSums(torch.autograd.Function):
    """Fused per-bin sums (numba forward) with a gather backward; CPU only.

    ``p`` (float32/float64) and ``y`` are read in place (any strides; half/bool/integer targets
    as stored) when their spatial dims merge into one axis, else from contiguous copies.
    """

    @staticmethod
    def forward(ctx, p, y, num_bins, right, soft, check_range=False):  # type: ignore[override]
        kern = _kernels()
        ap, ay = _kernel_array(kern, p), _kernel_array(kern, y)
        if ap is None or ay is None:
            p, y = p.contiguous(), y.contiguous()
            ap, ay = _kernel_array(kern, p), _kernel_array(kern, y)
        (p_src, dims), (y_src, _) = ap, ay
        outs = _zero_sums(*p.shape[:2], num_bins, soft)
        bad = _kernel_pass(kern, dims, p_src, y_src, num_bins, right, soft, outs)
        if check_range and any(bad):
            raise ValueError(
                f"y_pred and y must lie in [0, 1] and contain no NaN; {bad[0]} values of y_pred "
                f"and {bad[1]} of y do not."
            )
        ctx.save_for_backward(p, y)
        ctx.conf = (num_bins, right, soft)
        out = tuple(t.to(p.dtype) for t in outs)
        if not soft:  # hard counts have no gradient, nor hard target sums unless y needs one
            ctx.mark_non_differentiable(*out[:1], *out[2:] if not ctx.needs_input_grad[1] else ())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w, g_sp, g_sy):  # type: ignore[override]
        p, y = ctx.saved_tensors
        num_bins, right, soft = ctx.conf
        want_p, want_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_p or want_y):
            return None, None, None, None, None, None
        kern = _kernels()
        b, c = p.shape[:2]

        def table(g: torch.Tensor | None):
            if g is None:
                return torch.zeros(b, c, num_bins, dtype=torch.float64).numpy()
            return g.detach().to(torch.float64).contiguous().numpy()

        def grad_like(t: torch.Tensor) -> tuple[torch.Tensor, tuple]:
            """An uninitialised gradient in t's layout (p's dtype) and its kernel destination."""
            g = torch.empty_like(t, dtype=p.dtype)
            d = _kernel_dest(kern, g)
            if d is None:
                g = torch.empty(t.shape, dtype=p.dtype)
                d = _kernel_dest(kern, g)
            return g, d

        gp, gp_dst = grad_like(p)
        gy, gy_dst = grad_like(y) if want_y else (None, kern.no_dest(gp_dst[0].dtype))
        p_src, dims = _kernel_array(kern, p)
        strides = [_strides(p_src), gp_dst[-3:]] + ([gy_dst[-3:]] if want_y else [])
        if soft:  # the soft backward reads y as well
            y_src = _kernel_array(kern, y)[0]
            strides.append(_strides(y_src))
        span = _span(kern, dims, *strides)
        if soft:
            tables = (table(g_w), table(g_sp), table(g_sy))
            args = (_inv_width(num_bins), num_bins, *tables, gp_dst, gy_dst, want_y, span)
            kern.soft_grad(dims, p_src, y_src, *args)
        else:
            lo, hi = _kernel_edges(kern, num_bins, right)
            args = (lo, hi, table(g_sp), table(g_sy), gp_dst, gy_dst, want_y, span)
            kern.hard_grad(dims, p_src, *args)
        if want_y and gy.dtype != y.dtype:
            gy = gy.to(y.dtype)
        return (gp if want_p else None), (gy if want_y else None), None, None, None, None


# ----------------------------------------------------------------------------- public API


def _binned_sums_reference(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-autograd torch implementation of :func:`binned_sums` (CUDA path and reference)."""
    check_num_bins(num_bins)
    b, c = y_pred.shape[:2]
    p = y_pred.flatten(2)
    if p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    g = y.flatten(2).to(p.dtype)
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


def binned_sums(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
    check_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable per-bin sums (weight, sum_p, sum_gt), each ``[B, C, K]`` in the dtype of
    ``y_pred`` (float32 for half inputs). Gradients flow to ``y_pred`` (and ``y`` if it requires
    grad); for hard binning the weight (a count) has no gradient. On CPU a fused numba pass
    (float64 accumulation) with a gather backward; on CUDA one vectorised torch pass.

    Raises ValueError, with ``check_range``, when a value of ``y_pred`` or ``y`` lies outside
    [0, 1] or is NaN: on CPU the fused pass finds them at no extra cost, elsewhere one extra
    pass over both tensors.
    """
    check_num_bins(num_bins)
    validate_pair(y_pred, y, check_range=False)
    kern = _use_kernels(y_pred, y, num_bins)
    if kern is None or y_pred.numel() == 0:
        if check_range:
            validate_pair(y_pred, y, check_range=True)
        return _binned_sums_reference(y_pred, y, num_bins, right, soft)
    p = y_pred if y_pred.dtype in _KERNEL_P else y_pred.float()
    g = y if y.dtype != torch.bool else y.view(torch.uint8)
    return _BinnedSums.apply(p, g, num_bins, bool(right), bool(soft), bool(check_range))


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
def _compute_bin_stats_torch(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_bins: int = 20,
    right: bool = False,
    soft: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    validate: bool = True,
) -> BinStats:
    """Torch implementation of :func:`compute_bin_stats` (CUDA path and reference)."""
    check_num_bins(num_bins)
    if validate:
        validate_pair(y_pred, y)
    b, c = y_pred.shape[:2]
    p = y_pred.flatten(2)
    g = y.flatten(2)
    n = p.shape[-1]
    cols = max(1, chunk_size // max(b * c, 1))
    acc = BinStats.zeros(b, c, num_bins, soft=soft, device=y_pred.device)
    base = (torch.arange(b * c, device=y_pred.device) * num_bins).view(b, c, 1)
    size = b * c * num_bins
    for start in range(0, max(n, 1), cols):
        pc = p[..., start : start + cols].contiguous()
        gc = g[..., start : start + cols].to(torch.float64)
        if not soft:
            # counts and sums on the same indices but accumulated in int64 / float64
            flat = (_hard_index(pc, num_bins, right) + base).reshape(-1)
            cnt = torch.bincount(flat, minlength=size).view(b, c, num_bins)
            sp = torch.zeros(size, dtype=torch.float64, device=pc.device).index_add_(
                0, flat, pc.reshape(-1).to(torch.float64)
            )
            sg = torch.zeros(size, dtype=torch.float64, device=pc.device).index_add_(
                0, flat, gc.reshape(-1)
            )
            acc = acc + BinStats(cnt, sp.view(b, c, num_bins), sg.view(b, c, num_bins))
        else:
            w, sp, sg = _binned_sums_reference(pc.to(torch.float64), gc, num_bins, right, soft)
            acc = acc + BinStats(w, sp, sg)
    return acc


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

    Integer counts (hard) and float64 sums of the values as given (float16/bfloat16/float32/
    float64 probabilities; floating, bool or integer targets). On CPU one fused parallel pass
    over the data with range/NaN validation folded in, reading the tensors in place whatever
    their dtype and strides (channel-last, sliced along B or C); only inputs whose spatial dims
    cannot be viewed as one axis (crops) are copied, ``chunk_size`` values at a time, so the
    extra memory stays bounded. CUDA tensors use the chunked torch path.
    """
    check_num_bins(num_bins)
    tensors = isinstance(y_pred, torch.Tensor) and isinstance(y, torch.Tensor)
    kern = _use_kernels(y_pred, y, num_bins) if tensors else None
    # the kernels count integer targets outside [0, 1]: no separate min/max pass for them
    validate_pair(y_pred, y, check_range=False, check_int=kern is None)
    if kern is None or y_pred.numel() == 0:
        return _compute_bin_stats_torch(y_pred, y, num_bins, right, soft, chunk_size, validate)
    if not y_pred.is_floating_point():
        raise ValueError(f"y_pred must be a floating-point tensor, got {y_pred.dtype}.")
    stats, bad_p, bad_y = _kernel_bin_stats(kern, y_pred, y, num_bins, right, soft, chunk_size)
    int_y = y.dtype != torch.bool and not y.is_floating_point()
    if (validate and (bad_p or bad_y)) or (int_y and bad_y):
        validate_pair(y_pred, y, check_range=validate)  # raises with the precise message
        raise ValueError("y_pred and y must lie in [0, 1] and contain no NaN.")
    return stats
