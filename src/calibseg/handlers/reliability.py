"""Ignite handler drawing reliability diagrams at the end of each epoch or of the run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine

from calibseg import storage
from calibseg.handlers.calibration import CaseStatsCollector
from calibseg.metrics.diagram import draw_figures, figure_options_from_paper
from calibseg.metrics.reliability import binning_tensor, calculate_heatmap_from_bins

__all__ = ["ReliabilityDiagramHandler"]

logger = logging.getLogger(__name__)


class ReliabilityDiagramHandler(CaseStatsCollector):
    """Per-case reliability diagrams and the dataset reliability figure from an Ignite run.

    Accepts the signature of the paper's code (``num_classes`` first, figure arguments; usable
    as a handler or under a workflow's ``additional_metrics``) and keeps calibseg's options as
    keywords. Collects per-case BinStats (reusing
    :class:`~calibseg.handlers.BinningDataHandler`'s ``iteration_binning`` when it is attached
    first) and, at ``COMPLETED`` (``when="run"``) or every ``EPOCH_COMPLETED``
    (``when="epoch"``, into ``<output_dir>/epoch_<n>/``), draws
    ``dataset_reliability_diagram.<fmt>`` and, with ``draw_case_diagrams``,
    ``<case>_reliability_diagram.<fmt>``. Stores ``self.heatmap`` ``[C, K, K]`` and
    ``self.aggregated`` ``[C, 3, K]`` (see :class:`calibseg.metrics.ReliabilityDiagramMetric`);
    attached with a name, also ``engine.state.metrics[name]`` (the heat map) and, with
    ``save_details``, ``engine.state.metric_details[name]`` (per-case mean_p, mean_gt, counts
    ``[N, C, 3, K]``).

    Args:
        num_classes: number of input channels (background included); checked against the data.
        num_bins, include_background: binning options.
        output_dir: folder or URL for the figures (required when drawing).
        figsize, class_names, draw_case_diagrams, draw_case_histograms, print_case_ece,
        print_case_ace, print_case_mce, draw_dataset_diagrams, draw_dataset_histograms,
        draw_dataset_average_over_classes, dataset_imshow_kwargs, savefig_kwargs, rc_params:
            as in :class:`calibseg.metrics.ReliabilityDiagramMetric`.
        case_name_transform: ``engine.state`` → case names of the iteration.
        output_transform: ``engine.state.output`` → ``(y_pred, y)``.
        save_details: with a name, keep the per-case bins in ``engine.state.metric_details``.
        right: bin-edge rule.
        average_over_classes: alias of ``draw_dataset_average_over_classes``.
        fmt: ``"png"`` or ``"pdf"`` (default: ``savefig_kwargs["format"]``, else png).
        when: ``"run"`` or ``"epoch"``.
        figure_options: other options for :mod:`calibseg.visualize` (title, colours, …).

    Raises:
        ValueError: drawing without ``output_dir``; ``class_names`` or the data disagree with
            ``num_classes``; bad ``fmt`` or ``when``.

    Example:
        >>> ReliabilityDiagramHandler(num_classes=2, output_dir="out/figures",
        ...                           class_names=["bg", "liver"],
        ...                           draw_case_diagrams=True).attach(evaluator)  # doctest: +SKIP
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
        draw_dataset_diagrams: bool = True,
        draw_dataset_histograms: bool = False,
        draw_dataset_average_over_classes: bool = False,
        dataset_imshow_kwargs: dict[str, Any] | None = None,
        savefig_kwargs: dict[str, Any] | None = None,
        rc_params: dict[str, Any] | None = None,
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
        save_details: bool = True,
        *,
        right: bool = False,
        average_over_classes: bool = False,
        fmt: str | None = None,
        when: str = "run",
        figure_options: dict[str, Any] | None = None,
    ) -> None:
        if (draw_case_diagrams or draw_dataset_diagrams) and not output_dir:
            raise ValueError("ReliabilityDiagramHandler needs output_dir (a folder or URL).")
        if num_classes is not None:
            num_classes = int(num_classes)
            if class_names is not None and len(class_names) != num_classes:
                raise ValueError(
                    f"{len(class_names)} class_names given for num_classes={num_classes}."
                )
            if not include_background and num_classes == 1:
                raise ValueError("include_background=False needs more than one class.")
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
        super().__init__(
            num_bins,
            include_background,
            right,
            class_names,
            when,
            output_transform,
            case_name_transform,
        )
        self.num_classes = num_classes
        self.output_dir = str(output_dir) if output_dir else None
        self.draw_case_diagrams = draw_case_diagrams
        self.draw_dataset_diagrams = draw_dataset_diagrams
        self.average_over_classes = bool(average_over_classes or draw_dataset_average_over_classes)
        self.save_details = save_details
        self.name: str | None = None
        self.heatmap: torch.Tensor | None = None
        self.aggregated: torch.Tensor | None = None
        self.written: list[str] = []

    def attach(self, engine: Engine, name: str | None = None) -> None:
        """Attach to ``engine``; with ``name`` (as a workflow metric) the heat map is also
        stored in ``engine.state.metrics[name]``."""
        self.name = name
        super().attach(engine)

    def collect(self, engine: Engine) -> None:
        """Add this iteration's cases (channels checked against ``num_classes``)."""
        before = len(self._stats)
        super().collect(engine)
        if self.num_classes is not None and len(self._stats) > before:
            c = self._stats[-1].shape[1] + (0 if self.include_background else 1)
            if c != self.num_classes:
                raise ValueError(f"the data has {c} channels but num_classes={self.num_classes}.")

    def finalize(self, engine: Engine) -> None:
        stats = self.stats
        self.heatmap = calculate_heatmap_from_bins(stats.means()[1], self.num_bins)
        self.aggregated = binning_tensor(stats.total())[0]
        if self.name is not None:
            engine.state.metrics[self.name] = self.heatmap
            if self.save_details:
                details = getattr(engine.state, "metric_details", None)
                if not isinstance(details, dict):
                    details = {}
                    engine.state.metric_details = details  # type: ignore[attr-defined]
                details[self.name] = binning_tensor(stats)
        written: list[str] = []
        if self.output_dir is not None:
            folder = self.output_dir
            if self.when == "epoch":
                folder = storage.join(folder, f"epoch_{engine.state.epoch}")
            written = draw_figures(
                stats,
                folder,
                self.names_of_classes,
                self.case_names,
                self.draw_dataset_diagrams,
                self.draw_case_diagrams,
                self.average_over_classes,
                self.case_options,
                self.dataset_options,
            )
            logger.info("reliability figures: %d written to %s", len(written), folder)
        self.written = written
