"""Calibration metrics (ECE / ACE / MCE, macro and micro), reliability data and bin-stat files.

Multi-rater, uncertainty and error-detection metrics live in submodules
(``calibseg.metrics.multirater`` …) and are imported from there.
"""

import importlib

# public name -> submodule: imported on first use, so that importing a submodule (the command
# line reads calibseg.metrics.choices) does not load MONAI and torch
_SOURCES = {
    "load_bin_stats": "binstats_io",
    "save_bin_stats": "binstats_io",
    "ERROR_NAMES": "calibration",
    "CalibrationAccumulator": "calibration",
    "CalibrationErrorMetric": "calibration",
    "CalibrationReduction": "calibration",
    "calibration_binning": "calibration",
    "macro_micro_errors": "calibration",
    "ReliabilityDiagramMetric": "diagram",
    "binning_tensor": "reliability",
    "calculate_heatmap_from_bins": "reliability",
    "stats_from_binning_tensor": "reliability",
}


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])


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
