"""The reliability-diagram metric of the paper's API: per-case bins, the dataset reliability
histogram (:func:`~calibseg.metrics.calculate_heatmap_from_bins`) and its figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.metrics.metric import CumulativeIterationMetric
from monai.metrics.utils import ignore_background

from calibseg.binning import BinStats, check_num_bins, compute_bin_stats
from calibseg.metrics.figures import (
    draw_case_reliability_diagrams,
    draw_dataset_reliability_diagrams,
)
from calibseg.metrics.reliability import binning_tensor, calculate_heatmap_from_bins

__all__ = ["ReliabilityDiagramMetric", "draw_figures", "figure_options_from_paper"]


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
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paper's figure arguments of the metric and handler → keyword arguments of
    :func:`~calibseg.metrics.figures.draw_case_reliability_diagrams` and
    :func:`~calibseg.metrics.figures.draw_dataset_reliability_diagrams`; ``figure_options``
    (calibseg's drawing options: ``title``, ``color`` …) go to the function that takes them."""
    fmt_out = fmt or (savefig_kwargs or {}).get("format") or "png"
    if fmt_out not in ("png", "pdf"):
        raise ValueError(f"fmt must be 'png' or 'pdf', got {fmt_out!r}.")
    common = {
        "figsize": figsize,
        "savefig_kwargs": savefig_kwargs,
        "rc_params": rc_params,
        "fmt": fmt_out,
    }
    case = dict(common, draw_histograms=bool(draw_case_histograms))
    case.update(zip(("print_ece", "print_ace", "print_mce"), print_case, strict=True))
    dataset = dict(
        common, draw_histograms=bool(draw_dataset_histograms), imshow_kwargs=dataset_imshow_kwargs
    )
    extra = dict(figure_options or {})
    case.update({k: v for k, v in extra.items() if k not in ("cmap", "show_aggregate")})
    dataset.update({k: v for k, v in extra.items() if k not in ("color", "gap_color")})
    return case, dataset


def draw_figures(
    stats: BinStats,
    output_dir: str,
    class_names: Sequence[str] | None,
    case_names: Sequence[str],
    draw_dataset: bool,
    draw_case: bool,
    average_over_classes: bool,
    case_options: dict[str, Any],
    dataset_options: dict[str, Any],
) -> list[str]:
    """The reliability figures of :class:`ReliabilityDiagramMetric` and
    :class:`calibseg.handlers.ReliabilityDiagramHandler`; returns the paths written."""
    avg = {"average_over_classes": average_over_classes}
    written: list[str] = []
    if draw_dataset:
        written += draw_dataset_reliability_diagrams(
            stats, output_dir, class_names=class_names, **(avg | dataset_options)
        )
    if draw_case:
        written += draw_case_reliability_diagrams(
            stats,
            output_dir,
            case_names=case_names,
            class_names=class_names,
            **(avg | case_options),
        )
    return written


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
        print_case_ece, print_case_ace, print_case_mce: print that error in case figures.
        draw_dataset_diagrams: draw ``dataset_reliability_diagram.<fmt>``; default: when
            ``output_dir`` is given.
        draw_dataset_average_over_classes: figures get an extra "average" panel.
        dataset_imshow_kwargs: ``imshow`` options of the dataset heat map (``cmap``, ``norm`` …).
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
        self.case_options, self.dataset_options = figure_options_from_paper(
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
        return self.report(self.case_stats(), self.case_names)

    def report(
        self, stats: BinStats, case_names: Sequence[str], output_dir: str | None = None
    ) -> torch.Tensor:
        """Heat map, pooled bins and figures of per-case ``stats`` ``[N, C, K]`` (the kept
        channels) into ``output_dir`` (default ``self.output_dir``); returns the heat map."""
        self.heatmap = calculate_heatmap_from_bins(stats.means()[1], self.num_bins)
        self.aggregated = binning_tensor(stats.total())[0]
        self.written = []
        if self.draw_dataset_diagrams or self.draw_case_diagrams:
            self.written = draw_figures(
                stats,
                str(output_dir or self.output_dir),
                self.names_of_classes,
                list(case_names),
                self.draw_dataset_diagrams,
                self.draw_case_diagrams,
                self.average_over_classes,
                self.case_options,
                self.dataset_options,
            )
        return self.heatmap
