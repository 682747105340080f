"""Ignite handlers: calibration errors, reliability figures and shared per-iteration binning."""

from calibseg.handlers.binning import (
    AGGREGATED_KEY,
    ITERATION_KEY,
    RUNNING_KEY,
    BinningDataHandler,
)
from calibseg.handlers.calibration import CalibrationError, CalibrationErrorHandler
from calibseg.handlers.reliability import ReliabilityDiagramHandler

__all__ = [
    "AGGREGATED_KEY",
    "ITERATION_KEY",
    "RUNNING_KEY",
    "BinningDataHandler",
    "CalibrationError",
    "CalibrationErrorHandler",
    "ReliabilityDiagramHandler",
]
