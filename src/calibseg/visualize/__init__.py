"""Figures: per-case reliability diagrams and dataset reliability histograms (matplotlib, headless).

The renderers live in :mod:`calibseg.metrics.figures` because
:class:`calibseg.metrics.ReliabilityDiagramMetric` draws them (the paper's API) and the metrics
layer may not import this one; this package is their public home.
"""

from calibseg.metrics.figures import (
    draw_case_reliability_diagrams,
    draw_dataset_reliability_diagrams,
)

__all__ = ["draw_case_reliability_diagrams", "draw_dataset_reliability_diagrams"]
