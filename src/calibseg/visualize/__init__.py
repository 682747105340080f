"""Figures: per-case reliability diagrams and dataset reliability histograms (matplotlib, headless)."""

from calibseg.visualize.reliability import (
    draw_case_reliability_diagrams,
    draw_dataset_reliability_diagrams,
)

__all__ = ["draw_case_reliability_diagrams", "draw_dataset_reliability_diagrams"]
