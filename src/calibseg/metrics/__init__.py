"""Calibration metrics (ECE / ACE / MCE, macro and micro), reliability data and bin-stat files.

Multi-rater, uncertainty and error-detection metrics live in submodules
(``calibseg.metrics.multirater`` …) and are imported from there.
"""

from calibseg.metrics.binstats_io import load_bin_stats, save_bin_stats
from calibseg.metrics.calibration import (
    ERROR_NAMES,
    CalibrationAccumulator,
    CalibrationErrorMetric,
    CalibrationReduction,
    calibration_binning,
    macro_micro_errors,
)
from calibseg.metrics.diagram import ReliabilityDiagramMetric
from calibseg.metrics.reliability import (
    binning_tensor,
    calculate_heatmap_from_bins,
    stats_from_binning_tensor,
)

__all__ = [
    "ERROR_NAMES",
    "CalibrationAccumulator",
    "CalibrationErrorMetric",
    "CalibrationReduction",
    "ReliabilityDiagramMetric",
    "binning_tensor",
    "calculate_heatmap_from_bins",
    "calibration_binning",
    "load_bin_stats",
    "macro_micro_errors",
    "save_bin_stats",
    "stats_from_binning_tensor",
]
