"""Evaluation of runs: per-case calibration, Dice and HD95; tables, summaries and figures."""

from calibseg.evaluate.pipeline import (
    METRICS,
    REGION_DATASETS,
    evaluate_case,
    evaluate_run,
    next_free_dir,
)

__all__ = ["evaluate_run", "evaluate_case", "next_free_dir", "METRICS", "REGION_DATASETS"]
