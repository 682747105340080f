"""Ignite handler drawing reliability diagrams at the end of each epoch or of the run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine

from calibseg import storage
from calibseg.handlers.calibration import CaseStatsCollector
from calibseg.metrics.reliability import binning_tensor, calculate_heatmap_from_bins

__all__ = ["ReliabilityDiagramHandler"]

logger = logging.getLogger(__name__)


class ReliabilityDiagramHandler(CaseStatsCollector):
    """Per-case reliability diagrams and the dataset reliability figure from an Ignite run.

    Collects per-case BinStats (reusing :class:`~calibseg.handlers.BinningDataHandler`'s
    ``iteration_binning`` when it is attached first) and, at ``COMPLETED`` (``when="run"``)
    or every ``EPOCH_COMPLETED`` (``when="epoch"``, into ``<output_dir>/epoch_<n>/``), draws
    ``dataset_reliability_diagram.<fmt>`` and, with ``draw_case_diagrams``,
    ``<case>_reliability_diagram.<fmt>``. Also stores ``self.heatmap`` ``[C, K, K]`` and
    ``self.aggregated`` ``[C, 3, K]`` (see :class:`calibseg.metrics.ReliabilityDiagramMetric`).

    Args:
        output_dir: folder or URL for the figures (required).
        num_bins, include_background, right: binning options.
        class_names: names of all input channels (background first).
        draw_case_diagrams: one figure per case.
        draw_dataset_diagrams: the dataset figure.
        average_over_classes: extra "average over classes" panel.
        fmt: ``"png"`` or ``"pdf"``.
        when: ``"run"`` or ``"epoch"``.
        output_transform: ``engine.state.output`` → ``(y_pred, y)``.
        case_name_transform: ``engine.state`` → case names of the iteration.
        figure_options: options for :mod:`calibseg.visualize` (figsize, cmap, rc_params, …).

    Example:
        >>> ReliabilityDiagramHandler("out/figures", class_names=["bg", "liver"],
        ...                           draw_case_diagrams=True).attach(evaluator)  # doctest: +SKIP
    """

    def __init__(
        self,
        output_dir: str,
        num_bins: int = 20,
        include_background: bool = True,
        right: bool = False,
        class_names: Sequence[str] | None = None,
        draw_case_diagrams: bool = False,
        draw_dataset_diagrams: bool = True,
        average_over_classes: bool = False,
        fmt: str = "png",
        when: str = "run",
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
        case_name_transform: Callable[[Any], Sequence[str]] | None = None,
        figure_options: dict[str, Any] | None = None,
    ) -> None:
        if not output_dir:
            raise ValueError("ReliabilityDiagramHandler needs output_dir (a folder or URL).")
        if fmt not in ("png", "pdf"):
            raise ValueError(f"fmt must be 'png' or 'pdf', got {fmt!r}.")
        super().__init__(
            num_bins,
            include_background,
            right,
            class_names,
            when,
            output_transform,
            case_name_transform,
        )
        self.output_dir = str(output_dir)
        self.draw_case_diagrams = draw_case_diagrams
        self.draw_dataset_diagrams = draw_dataset_diagrams
        self.average_over_classes = average_over_classes
        self.fmt = fmt
        self.figure_options = dict(figure_options or {})
        self.heatmap: torch.Tensor | None = None
        self.aggregated: torch.Tensor | None = None
        self.written: list[str] = []

    def finalize(self, engine: Engine) -> None:
        from calibseg import visualize

        stats = self.stats
        self.heatmap = calculate_heatmap_from_bins(stats.means()[1], self.num_bins)
        self.aggregated = binning_tensor(stats.total())[0]
        folder = self.output_dir
        if self.when == "epoch":
            folder = storage.join(folder, f"epoch_{engine.state.epoch}")
        opts = dict(self.figure_options)
        opts.setdefault("average_over_classes", self.average_over_classes)
        names = self.names_of_classes
        written: list[str] = []
        if self.draw_dataset_diagrams:
            written += visualize.draw_dataset_reliability_diagrams(
                stats, folder, class_names=names, fmt=self.fmt, **opts
            )
        if self.draw_case_diagrams:
            written += visualize.draw_case_reliability_diagrams(
                stats, folder, self.case_names, class_names=names, fmt=self.fmt, **opts
            )
        self.written = written
        logger.info("reliability figures: %d written to %s", len(written), folder)
