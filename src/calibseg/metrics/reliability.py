"""Reliability data: per-case bins, dataset reliability histograms and pooled (micro) bins.

A *dataset reliability histogram* summarises how calibrated the individual cases are: for
each class, confidence bin ``k`` and accuracy bin ``j`` it counts the cases whose accuracy
(mean target) in confidence bin ``k`` falls into accuracy bin ``j``. A calibrated model puts
the mass on the diagonal. Row 0 is the *highest* accuracy bin, so the array can be shown
as an image with the origin at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics.metric import CumulativeIterationMetric
from monai.metrics.utils import ignore_background

from calibseg.binning import BinStats, check_num_bins, compute_bin_stats

__all__ = [
    "calculate_heatmap_from_bins",
    "ReliabilityDiagramMetric",
    "binning_tensor",
    "stats_from_binning_tensor",
]


def calculate_heatmap_from_bins(mean_gt: torch.Tensor, num_bins: int | None = None) -> torch.Tensor:
    """Dataset reliability histogram from per-case accuracies.

    Args:
        mean_gt: per-case mean target per confidence bin ``[N, C, K]``; NaN for empty bins
            (those cases are not counted in that bin).
        num_bins: number of accuracy bins ``J`` over [0, 1] (default ``K``). Bin ``j`` holds
            accuracies in ``[j/J, (j+1)/J)``, the last also 1.0 (as ``torch.histc``).

    Returns:
        ``[C, J, K]`` int64 counts of cases; row 0 = highest accuracy bin.
    """
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
    acc_bin = (torch.where(valid, v, torch.zeros_like(v)) * j).long().clamp_(0, j - 1)
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


class ReliabilityDiagramMetric(CumulativeIterationMetric):
    """Per-case bin statistics, the dataset reliability histogram and reliability figures.

    Each call buffers ``[B, C, 3, K]`` per-case sums (counts, sum_p, sum_gt; float64, exact).
    :meth:`aggregate` returns ``(heatmap [C, K, K] int64, aggregated [C, 3, K] float64)``: the
    dataset reliability histogram (:func:`calculate_heatmap_from_bins`) and the pooled bins
    (mean_p, mean_gt, counts of the summed statistics). With ``output_dir`` it also draws the
    dataset figure (``draw_dataset_diagrams``) and one figure per case (``draw_case_diagrams``).

    Args:
        num_bins: equal-width confidence bins over [0, 1].
        include_background: keep channel 0.
        right: bin-edge rule (see :func:`calibseg.metrics.calibration_binning`).
        class_names: names of the input channels (all ``C``, background first); default
            ``class_0 …``. Dropped together with channel 0 when ``include_background=False``.
        average_over_classes: figures get an extra "average" panel (classes pooled).
        output_dir: folder (or ``s3://`` URL) for figures; required when drawing.
        draw_case_diagrams: draw ``<case>_reliability_diagram.<fmt>`` per case.
        draw_dataset_diagrams: draw ``dataset_reliability_diagram.<fmt>``.
        fmt: ``"png"`` or ``"pdf"``.
        figure_options: extra keyword options for the drawing functions (figsize, cmap,
            rc_params, savefig_kwargs, …).

    Case names: pass ``case_names=[...]`` when calling the metric; default ``case_<index>``.
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        right: bool = False,
        class_names: Sequence[str] | None = None,
        average_over_classes: bool = False,
        output_dir: str | None = None,
        draw_case_diagrams: bool = False,
        draw_dataset_diagrams: bool = False,
        fmt: str = "png",
        figure_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_num_bins(num_bins)
        if (draw_case_diagrams or draw_dataset_diagrams) and not output_dir:
            raise ValueError("drawing reliability diagrams needs output_dir (a folder or URL).")
        if fmt not in ("png", "pdf"):
            raise ValueError(f"fmt must be 'png' or 'pdf', got {fmt!r}.")
        self.num_bins = num_bins
        self.include_background = include_background
        self.right = right
        self.class_names = list(class_names) if class_names is not None else None
        self.average_over_classes = average_over_classes
        self.output_dir = output_dir
        self.draw_case_diagrams = draw_case_diagrams
        self.draw_dataset_diagrams = draw_dataset_diagrams
        self.fmt = fmt
        self.figure_options = dict(figure_options or {})
        self.case_names: list[str] = []
        self.written: list[str] = []

    def reset(self) -> None:
        super().reset()
        self.case_names = []

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Per-case sums ``[B, C, 3, K]`` (counts, sum_p, sum_gt) for inputs ``[B, C, *spatial]``."""
        if self.class_names is not None and len(self.class_names) != y_pred.shape[1]:
            raise ValueError(
                f"{len(self.class_names)} class_names given but the input has "
                f"{y_pred.shape[1]} channels."
            )
        if not self.include_background:
            y_pred, y = ignore_background(y_pred=y_pred, y=y)
        s = compute_bin_stats(y_pred, y, num_bins=self.num_bins, right=self.right)
        names = kwargs.get("case_names")
        b = y_pred.shape[0]
        if names is None:
            start = len(self.case_names)
            names = [f"case_{i}" for i in range(start, start + b)]
        elif isinstance(names, str):
            names = [names]
        if len(names) != b:
            raise ValueError(f"{len(names)} case_names given for a batch of {b} cases.")
        self.case_names.extend(str(n) for n in names)
        return torch.stack([s.weight.to(torch.float64), s.sum_p, s.sum_gt], dim=2)

    def _compute_list(  # type: ignore[override]
        self, y_pred: Sequence[torch.Tensor], y: Sequence[torch.Tensor], **kwargs: Any
    ) -> torch.Tensor:
        """Channel-first cases ``[C, *spatial]`` (sizes may differ) → ``[N, C, 3, K]``."""
        if y is None or len(y_pred) != len(y):
            raise ValueError("y_pred and y must be lists of the same length.")
        names = kwargs.get("case_names")
        if names is not None and len(names) != len(y_pred):
            raise ValueError(f"{len(names)} case_names given for {len(y_pred)} cases.")
        names = list(names) if names is not None else [None] * len(y_pred)
        return torch.cat(
            [
                self._compute_tensor(
                    p.detach().unsqueeze(0),
                    t.detach().unsqueeze(0),
                    case_names=None if n is None else [n],
                )
                for p, t, n in zip(y_pred, y, names, strict=True)
            ]
        )

    @property
    def names_of_classes(self) -> list[str] | None:
        """Class names of the buffered channels (background dropped if excluded)."""
        if self.class_names is None:
            return None
        return self.class_names if self.include_background else self.class_names[1:]

    def case_stats(self) -> BinStats:
        """Buffered per-case statistics ``[N, C, K]`` (int64 counts)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ReliabilityDiagramMetric has no data: call it on a batch first.")
        return BinStats(data[:, :, 0].round().long(), data[:, :, 1], data[:, :, 2])

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """``(heatmap [C, K, K], aggregated [C, 3, K])``; draws the requested figures."""
        stats = self.case_stats()
        heatmap = calculate_heatmap_from_bins(stats.means()[1], self.num_bins)
        aggregated = binning_tensor(stats.total())[0]
        self.written = []
        if self.draw_dataset_diagrams or self.draw_case_diagrams:
            from calibseg import visualize

            opts = dict(self.figure_options)
            opts.setdefault("average_over_classes", self.average_over_classes)
            names = self.names_of_classes
            if self.draw_dataset_diagrams:
                self.written += visualize.draw_dataset_reliability_diagrams(
                    stats, self.output_dir, class_names=names, fmt=self.fmt, **opts
                )
            if self.draw_case_diagrams:
                self.written += visualize.draw_case_reliability_diagrams(
                    stats, self.output_dir, self.case_names, class_names=names, fmt=self.fmt, **opts
                )
        return heatmap, aggregated
