"""calibseg: calibrated probabilities and honest uncertainty for segmentation networks."""

__version__ = "0.1.0"
