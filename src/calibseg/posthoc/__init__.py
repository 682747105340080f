"""Post-hoc calibration of trained networks' probabilities (temperature scaling)."""

from calibseg.posthoc.temperature import apply_temperature, fit_temperature, nll

__all__ = ["fit_temperature", "apply_temperature", "nll"]
