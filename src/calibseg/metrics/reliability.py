"""Reliability data: per-case bins, dataset reliability histograms and pooled (micro) bins.

A *dataset reliability histogram* summarises how calibrated the individual cases are: for
each class, confidence bin ``k`` and accuracy bin ``j`` it counts the cases whose accuracy
(mean target) in confidence bin ``k`` falls into accuracy bin ``j``. A calibrated model puts
the mass on the diagonal. Row 0 is the *highest* accuracy bin, so the array can be shown
as an image with the origin at the top.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.metrics.metric import CumulativeIterationMetric
from monai.metrics.utils import ignore_background

from calibseg.binning import BinStats, bin_edges, check_num_bins, compute_bin_stats

__all__ = [
    "calculate_heatmap_from_bins",
    "figure_options_from_paper",
    "ReliabilityDiagramMetric",
    "binning_tensor",
    "stats_from_binning_tensor",
]


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


def figure_options_from_paper(
    figsize: Sequence[float] | None,
    draw_case_histograms: bool,
    draw_dataset_histograms: bool,
    print_case: tuple[bool, bool, bool],
    dataset_imshow_kwargs: dict[str, Any] | None,
    savefig_kwargs: dict[str, Any] | None,
    rc_params: dict[str, Any] | None,
    fmt: str | None,
    figure_options: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The paper's figure arguments → (case options, dataset options, format) for
    :mod:`calibseg.visualize`. ``figure_options`` (calibseg's own) apply to both and win.

    ``savefig_kwargs["format"]`` sets the format unless ``fmt`` is given; ``figsize`` is the
    size of one panel; imshow options other than ``cmap`` and ``print_case_*=False`` only
    style the paper's figures and are ignored with a warning.
    """
    save = dict(savefig_kwargs or {})
    fmt_saved = save.pop("format", None)
    out_fmt = fmt or fmt_saved or "png"
    if out_fmt not in ("png", "pdf"):
        raise ValueError(f"fmt must be 'png' or 'pdf', got {out_fmt!r}.")
    common: dict[str, Any] = {}
    if figsize is not None:
        common["panel_size"] = tuple(figsize)
    if save:
        common["savefig_kwargs"] = save
    if rc_params:
        common["rc_params"] = dict(rc_params)
    case = dict(common, show_counts=bool(draw_case_histograms))
    dataset = dict(common, show_counts=bool(draw_dataset_histograms))
    imshow = dict(dataset_imshow_kwargs or {})
    if "cmap" in imshow:
        dataset["cmap"] = imshow.pop("cmap")
    if imshow:
        warnings.warn(
            f"dataset_imshow_kwargs {sorted(imshow)} are not used (only 'cmap' is).", stacklevel=3
        )
    if not all(print_case):
        warnings.warn("case diagrams always print ECE, ACE and MCE.", stacklevel=3)
    extra = dict(figure_options or {})
    case.update({k: v for k, v in extra.items() if k not in ("cmap", "show_aggregate")})
    dataset.update({k: v for k, v in extra.items() if k not in ("color", "gap_color")})
    return case, dataset, out_fmt


class ReliabilityDiagramMetric(CumulativeIterationMetric):
    """Per-case bin statistics, the dataset reliability histogram and reliability figures.

    Accepts the signature of the paper's code (``num_classes`` first, figure arguments) and
    keeps calibseg's options as keywords. Each call buffers ``[B, C, 3, K]`` per-case sums
    (counts, sum_p, sum_gt; float64, exact). :meth:`aggregate` returns the dataset reliability
    histogram ``[C, K, K]`` int64 (:func:`calculate_heatmap_from_bins`), as the paper's code,
    and stores it in ``self.heatmap`` with the pooled bins (mean_p, mean_gt, counts of the
    summed statistics) ``[C, 3, K]`` in ``self.aggregated``. With ``output_dir`` it also draws
    the dataset figure (``draw_dataset_diagrams``) and one figure per case
    (``draw_case_diagrams``).

    Args:
        num_classes: number of input channels (background included); when given, inputs and
            ``class_names`` are checked against it.
        num_bins: equal-width confidence bins over [0, 1].
        include_background: keep channel 0.
        output_dir: folder (or ``s3://`` URL) for figures; required for case figures.
        figsize: size of one panel in inches.
        class_names: names of the input channels (all ``C``, background first); default
            ``class_0 …``. Dropped together with channel 0 when ``include_background=False``.
        draw_case_diagrams: draw ``<case>_reliability_diagram.<fmt>`` per case.
        draw_case_histograms, draw_dataset_histograms: voxel counts per bin beneath the panels.
        case_name_transform: ``y`` of a call → its case names (or pass ``case_names=[...]``
            when calling the metric); default ``case_<index>``.
        print_case_ece, print_case_ace, print_case_mce: accepted; the errors are always printed.
        draw_dataset_diagrams: draw ``dataset_reliability_diagram.<fmt>``; default: when
            ``output_dir`` is given.
        draw_dataset_average_over_classes: figures get an extra "average" panel.
        dataset_imshow_kwargs: ``cmap`` of the dataset heat map.
        savefig_kwargs: options of ``savefig`` (``format`` picks png/pdf); rc_params:
            matplotlib rc settings.
        right: bin-edge rule (see :func:`calibseg.metrics.calibration_binning`).
        average_over_classes: alias of ``draw_dataset_average_over_classes``.
        fmt: ``"png"`` or ``"pdf"`` (default: ``savefig_kwargs["format"]``, else png).
        figure_options: other options of the drawing functions (``title``, ``color`` …).

    Raises:
        ValueError: ``class_names`` or the input channels disagree with ``num_classes``; case
            figures without ``output_dir``; a format other than png/pdf.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        num_bins: int = 20,
        include_background: bool = True,
        output_dir: str | None = None,
        figsize: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        draw_case_diagrams: bool = False,
        draw_case_histograms: bool = False,
        case_name_transform: Callable[[Any], Sequence[str]] | None = None,
        print_case_ece: bool = True,
        print_case_ace: bool = True,
        print_case_mce: bool = True,
        draw_dataset_diagrams: bool | None = None,
        draw_dataset_histograms: bool = False,
        draw_dataset_average_over_classes: bool = False,
        dataset_imshow_kwargs: dict[str, Any] | None = None,
        savefig_kwargs: dict[str, Any] | None = None,
        rc_params: dict[str, Any] | None = None,
        right: bool = False,
        *,
        average_over_classes: bool = False,
        fmt: str | None = None,
        figure_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_num_bins(num_bins)
        if num_classes is not None:
            num_classes = int(num_classes)
            if num_classes < 1:
                raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
            if not include_background and num_classes == 1:
                raise ValueError("include_background=False needs more than one class.")
            if class_names is not None and len(class_names) != num_classes:
                raise ValueError(
                    f"{len(class_names)} class_names given for num_classes={num_classes}."
                )
        if draw_dataset_diagrams is None:
            draw_dataset_diagrams = bool(output_dir)
        if (draw_case_diagrams or draw_dataset_diagrams) and not output_dir:
            raise ValueError("drawing reliability diagrams needs output_dir (a folder or URL).")
        self.case_options, self.dataset_options, self.fmt = figure_options_from_paper(
            figsize,
            draw_case_histograms,
            draw_dataset_histograms,
            (print_case_ece, print_case_ace, print_case_mce),
            dataset_imshow_kwargs,
            savefig_kwargs,
            rc_params,
            fmt,
            figure_options,
        )
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.include_background = include_background
        self.right = right
        self.class_names = list(class_names) if class_names is not None else None
        self.average_over_classes = bool(average_over_classes or draw_dataset_average_over_classes)
        self.output_dir = output_dir
        self.draw_case_diagrams = draw_case_diagrams
        self.draw_dataset_diagrams = draw_dataset_diagrams
        self.case_name_transform = case_name_transform
        self.case_names: list[str] = []
        self.written: list[str] = []
        self.heatmap: torch.Tensor | None = None
        self.aggregated: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.case_names = []

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Per-case sums ``[B, C, 3, K]`` (counts, sum_p, sum_gt) for inputs ``[B, C, *spatial]``."""
        if self.num_classes is not None and y_pred.shape[1] != self.num_classes:
            raise ValueError(
                f"the input has {y_pred.shape[1]} channels but num_classes={self.num_classes}."
            )
        if self.class_names is not None and len(self.class_names) != y_pred.shape[1]:
            raise ValueError(
                f"{len(self.class_names)} class_names given but the input has "
                f"{y_pred.shape[1]} channels."
            )
        if not self.include_background:
            y_pred, y = ignore_background(y_pred=y_pred, y=y)
        s = compute_bin_stats(y_pred, y, num_bins=self.num_bins, right=self.right)
        names = kwargs.get("case_names")
        if names is None and self.case_name_transform is not None:
            names = self.case_name_transform(y)
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

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Dataset reliability histogram ``[C, K, K]``; also sets ``self.heatmap`` and
        ``self.aggregated`` ``[C, 3, K]`` and draws the requested figures."""
        stats = self.case_stats()
        self.heatmap = calculate_heatmap_from_bins(stats.means()[1], self.num_bins)
        self.aggregated = binning_tensor(stats.total())[0]
        self.written = []
        if self.draw_dataset_diagrams or self.draw_case_diagrams:
            from calibseg import visualize

            names = self.names_of_classes
            avg = {"average_over_classes": self.average_over_classes}
            if self.draw_dataset_diagrams:
                self.written += visualize.draw_dataset_reliability_diagrams(
                    stats,
                    self.output_dir,
                    class_names=names,
                    fmt=self.fmt,
                    **(avg | self.dataset_options),
                )
            if self.draw_case_diagrams:
                self.written += visualize.draw_case_reliability_diagrams(
                    stats,
                    self.output_dir,
                    self.case_names,
                    class_names=names,
                    fmt=self.fmt,
                    **(avg | self.case_options),
                )
        return self.heatmap
