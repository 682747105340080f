"""Calibration metrics: ECE / ACE / MCE per image and class, and dataset-level (micro) errors.

All values come from :func:`calibseg.binning.compute_bin_stats` (one vectorised pass, exact
int64 counts and float64 sums). :class:`CalibrationErrorMetric` is a drop-in replacement for
``monai.metrics.CalibrationErrorMetric`` (MONAI 1.6.1): same arguments, same results to float32
precision, without the Python loop over batch and class.

Two ways to summarise a dataset of N images:

- *macro*: errors per image and class ``[N, C]``, then the mean over images (NaN-aware);
- *micro*: sum the images' :class:`~calibseg.binning.BinStats` (they add up) and compute the
  errors of the pooled bins ``[C]``. :class:`CalibrationAccumulator` keeps only the running
  sums and the small per-image error table, so predictions are never held in memory.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics.calibration import CalibrationReduction
from monai.metrics.metric import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction, ignore_background
from monai.utils import MetricReduction

from calibseg.binning import BinStats, check_num_bins, compute_bin_stats

__all__ = [
    "CalibrationReduction",
    "calibration_binning",
    "CalibrationErrorMetric",
    "CalibrationAccumulator",
    "macro_micro_errors",
    "ERROR_NAMES",
]

# short names of the three reductions, in the order used in tables
ERROR_NAMES: tuple[str, str, str] = ("ece", "ace", "mce")
_REDUCTION_KEY = {
    CalibrationReduction.EXPECTED: "ece",
    CalibrationReduction.AVERAGE: "ace",
    CalibrationReduction.MAXIMUM: "mce",
}


def calibration_binning(
    y_pred: torch.Tensor, y: torch.Tensor, num_bins: int = 20, right: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean prediction, mean target and count, like MONAI's ``calibration_binning``.

    Args:
        y_pred: probabilities ``[B, C, *spatial]`` in [0, 1].
        y: binary targets of the same shape (one-hot).
        num_bins: equal-width bins over [0, 1].
        right: ``False`` → a value on an inner edge goes to the lower bin (``bucketize`` rule).

    Returns:
        ``(mean_p, mean_gt, counts)``, each ``[B, C, num_bins]`` float32 on ``y_pred``'s device;
        NaN means for empty bins.
    """
    mean_p, mean_gt, counts = compute_bin_stats(y_pred, y, num_bins=num_bins, right=right).means()
    return mean_p.float(), mean_gt.float(), counts.float()


def _reduce_errors(stats: BinStats, reduction: CalibrationReduction) -> torch.Tensor:
    return stats.errors()[_REDUCTION_KEY[reduction]]


class CalibrationErrorMetric(CumulativeIterationMetric):
    """ECE, ACE or MCE per image and class; a MONAI ``CumulativeIterationMetric``.

    Same arguments and results as ``monai.metrics.CalibrationErrorMetric`` (MONAI 1.6.1).
    Each call buffers a ``[B, C]`` tensor of errors (``C`` without background if
    ``include_background=False``); :meth:`aggregate` reduces the buffer with
    ``metric_reduction`` (``"none"``, ``"mean"``, ``"sum"``, ``"mean_batch"``, ``"sum_batch"``,
    ``"mean_channel"``, ``"sum_channel"``), ignoring NaN (images/classes whose bins are all
    empty, i.e. no voxels).

    A class absent from an image's ground truth is *not* NaN: its bins hold the voxels'
    predictions with accuracy 0, so the error measures probability put on an absent class
    (as in MONAI).

    Args:
        num_bins: equal-width bins over [0, 1].
        include_background: keep channel 0.
        calibration_reduction: ``"expected"`` (ECE, count-weighted mean gap), ``"average"``
            (ACE, unweighted mean over non-empty bins) or ``"maximum"`` (MCE).
        metric_reduction: reduction over the ``[N, C]`` buffer in :meth:`aggregate`.
        get_not_nans: :meth:`aggregate` also returns the count of non-NaN values.
        right: bin-edge rule, see :func:`calibration_binning`.

    Example:
        >>> metric = CalibrationErrorMetric(num_bins=15, include_background=False)
        >>> metric(y_pred=probs, y=onehot)  # doctest: +SKIP
        >>> ece = metric.aggregate()  # doctest: +SKIP
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        calibration_reduction: CalibrationReduction | str = CalibrationReduction.EXPECTED,
        metric_reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        right: bool = False,
    ) -> None:
        super().__init__()
        check_num_bins(num_bins)
        try:
            self.calibration_reduction = CalibrationReduction(calibration_reduction)
        except ValueError:
            valid = ", ".join(r.value for r in CalibrationReduction)
            raise ValueError(
                f"calibration_reduction must be one of {valid}, got {calibration_reduction!r}."
            ) from None
        try:
            self.metric_reduction = MetricReduction(metric_reduction)
        except ValueError:
            valid = ", ".join(r.value for r in MetricReduction)
            raise ValueError(
                f"metric_reduction must be one of {valid}, got {metric_reduction!r}."
            ) from None
        self.num_bins = num_bins
        self.include_background = include_background
        self.get_not_nans = get_not_nans
        self.right = right

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Errors ``[B, C]`` (float32) for probabilities and one-hot targets ``[B, C, *spatial]``."""
        if not self.include_background:
            y_pred, y = ignore_background(y_pred=y_pred, y=y)
        stats = compute_bin_stats(y_pred, y, num_bins=self.num_bins, right=self.right)
        return _reduce_errors(stats, self.calibration_reduction).float()

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``[N, C]`` errors (NaN ignored); ``(metric, not_nans)`` if
        ``get_not_nans``."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("CalibrationErrorMetric has no data: call it on a batch first.")
        f, not_nans = do_metric_reduction(data, reduction or self.metric_reduction)
        return (f, not_nans) if self.get_not_nans else f


def macro_micro_errors(stats: BinStats) -> dict[str, dict[str, torch.Tensor]]:
    """Macro and micro calibration errors of per-image statistics ``[N, C, K]``.

    Returns:
        ``{"macro": {"ece","ace","mce"}, "micro": {...}, "per_case": {...}}``: ``per_case``
        values are ``[N, C]``; ``macro`` is their NaN-ignoring mean over images ``[C]``;
        ``micro`` are the errors of the summed bins ``[C]`` (float64).
    """
    per_case = stats.errors()
    micro = {k: v[0] for k, v in stats.total().errors().items()}
    macro = {k: v.nanmean(0) for k, v in per_case.items()}
    return {"macro": macro, "micro": micro, "per_case": per_case}


class CalibrationAccumulator:
    """Streaming dataset calibration: add images one batch at a time, never hold the dataset.

    Keeps the running sum of :class:`BinStats` (``[1, C, K]``, micro errors), the per-image
    errors ``[N, C]`` (macro errors) and, unless ``keep_cases=False``, the per-image bin
    statistics ``[N, C, K]`` (a few KB per image; needed for dataset reliability histograms).

    Args:
        num_bins: equal-width bins over [0, 1].
        include_background: keep channel 0 of the inputs given to :meth:`update`.
        right: bin-edge rule, see :func:`calibration_binning`.
        keep_cases: keep the per-image statistics (:attr:`case_stats`).

    Example:
        >>> acc = CalibrationAccumulator(num_bins=20)
        >>> for probs, onehot in loader:  # doctest: +SKIP
        ...     acc.update(probs, onehot)
        >>> acc.result()["micro"]["ece"]  # doctest: +SKIP
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        right: bool = False,
        keep_cases: bool = True,
    ) -> None:
        check_num_bins(num_bins)
        self.num_bins = num_bins
        self.include_background = include_background
        self.right = right
        self.keep_cases = keep_cases
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self.total: BinStats | None = None
        self._errors: list[dict[str, torch.Tensor]] = []
        self._cases: list[BinStats] = []

    @property
    def num_cases(self) -> int:
        return sum(int(e["ece"].shape[0]) for e in self._errors)

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> BinStats:
        """Bin a batch ``[B, C, *spatial]`` and add it; returns its stats ``[B, C, K]``."""
        if not self.include_background:
            y_pred, y = ignore_background(y_pred=y_pred, y=y)
        stats = compute_bin_stats(y_pred, y, num_bins=self.num_bins, right=self.right)
        self.add(stats)
        return stats

    def add(self, stats: BinStats) -> None:
        """Add already computed per-image statistics ``[B, C, K]`` (e.g. from a worker)."""
        if stats.num_bins != self.num_bins:
            raise ValueError(
                f"BinStats have {stats.num_bins} bins but the accumulator uses {self.num_bins}."
            )
        stats = BinStats(stats.weight.cpu(), stats.sum_p.cpu(), stats.sum_gt.cpu())
        if self.total is not None and self.total.shape[1] != stats.shape[1]:
            raise ValueError(
                f"BinStats have {stats.shape[1]} classes but earlier ones had "
                f"{self.total.shape[1]}."
            )
        tot = stats.total()
        self.total = tot if self.total is None else self.total + tot
        self._errors.append(stats.errors())
        if self.keep_cases:
            self._cases.append(stats)

    @property
    def case_stats(self) -> BinStats:
        """Per-image statistics ``[N, C, K]`` in the order added (needs ``keep_cases``)."""
        if not self.keep_cases:
            raise ValueError("per-image statistics were not kept: use keep_cases=True.")
        if not self._cases:
            raise ValueError("the accumulator is empty: add some images first.")
        return BinStats.cat(self._cases)

    def per_case_errors(self) -> dict[str, torch.Tensor]:
        """``{"ece","ace","mce"}`` each ``[N, C]`` float64 (NaN for images without voxels)."""
        if not self._errors:
            raise ValueError("the accumulator is empty: add some images first.")
        return {k: torch.cat([e[k] for e in self._errors]) for k in ERROR_NAMES}

    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"macro": {...}, "micro": {...}}``, each ``{"ece","ace","mce"}`` of shape ``[C]``."""
        per_case = self.per_case_errors()
        assert self.total is not None
        micro = {k: v[0] for k, v in self.total.errors().items()}
        macro = {k: v.nanmean(0) for k, v in per_case.items()}
        return {"macro": macro, "micro": micro}
