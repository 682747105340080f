"""Ignite handler drawing reliability diagrams at the end of each epoch or of the run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine

from calibseg import storage
from calibseg.handlers.calibration import CaseStatsCollector
from calibseg.metrics.diagram import ReliabilityDiagramMetric
from calibseg.metrics.reliability import binning_tensor

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
        # the metric checks the arguments and draws; this handler collects the cases from a run
        self.metric = ReliabilityDiagramMetric(
            num_classes,
            num_bins,
            include_background,
            output_dir,
            figsize,
            class_names,
            draw_case_diagrams,
            draw_case_histograms,
            None,
            print_case_ece,
            print_case_ace,
            print_case_mce,
            draw_dataset_diagrams,
            draw_dataset_histograms,
            draw_dataset_average_over_classes,
            dataset_imshow_kwargs,
            savefig_kwargs,
            rc_params,
            right,
            average_over_classes=average_over_classes,
            fmt=fmt,
            figure_options=figure_options,
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
        self.num_classes = self.metric.num_classes
        self.output_dir = str(output_dir) if output_dir else None
        self.save_details = save_details
        self.name: str | None = None

    @property
    def heatmap(self) -> torch.Tensor | None:
        """Dataset reliability histogram ``[C, K, K]`` of the last finished epoch or run."""
        return self.metric.heatmap

    @property
    def aggregated(self) -> torch.Tensor | None:
        """Pooled (mean_p, mean_gt, counts) ``[C, 3, K]`` of the last finished epoch or run."""
        return self.metric.aggregated

    @property
    def written(self) -> list[str]:
        """Figures written at the last finish."""
        return self.metric.written

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
        folder = self.output_dir
        if folder is not None and self.when == "epoch":
            folder = storage.join(folder, f"epoch_{engine.state.epoch}")
        heatmap = self.metric.report(stats, self.case_names, folder)
        if self.name is not None:
            engine.state.metrics[self.name] = heatmap
            if self.save_details:
                details = getattr(engine.state, "metric_details", None)
                if not isinstance(details, dict):
                    details = {}
                    engine.state.metric_details = details  # type: ignore[attr-defined]
                details[self.name] = binning_tensor(stats)
        if self.written:
            logger.info("reliability figures: %d written to %s", len(self.written), folder)
