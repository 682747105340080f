"""Input handling shared by the calibration losses: activation, one-hot targets, checks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from monai.networks import one_hot

_HALF = (torch.float16, torch.bfloat16)


def check_activation(sigmoid: bool, softmax: bool, other_act: Callable | None) -> None:
    """MONAI's rule: at most one of sigmoid / softmax / other_act, other_act callable."""
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable, got {type(other_act).__name__}.")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError(
            "Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None]."
        )


def class_weight_tensor(
    weight: Sequence[float] | float | int | torch.Tensor | None,
) -> torch.Tensor | None:
    """Class weights as a float tensor (scalar or 1-D), checked to be finite and non-negative."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32).detach().clone()
    if w.ndim > 1:
        raise ValueError(f"weight must be a scalar or a 1-D sequence, got shape {tuple(w.shape)}.")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weight values must be finite and >= 0, got {w.tolist()}.")
    return w


def check_same_ndim(input: torch.Tensor, target: torch.Tensor) -> None:
    """``input`` is a floating ``[B, C, *spatial]`` tensor and ``target`` has as many dims."""
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("input and target must be torch.Tensor.")
    if input.ndim < 3:
        raise ValueError(
            f"input must have shape [B, C, *spatial] (at least 3 dims), got {tuple(input.shape)}."
        )
    if target.ndim != input.ndim:
        raise ValueError(
            f"input and target must have the same number of dims, got {tuple(input.shape)} and "
            f"{tuple(target.shape)}; give class indices as [B, 1, *spatial]."
        )
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}.")


def value_range(x: torch.Tensor, name: str = "input") -> tuple[float, float]:
    """(min, max) of a floating tensor in one pass; ``ValueError`` if it has NaN or Inf.

    ``torch.aminmax`` propagates NaN, so one reduction checks finiteness and range (several
    times faster than ``isfinite().all()`` plus a range check on large volumes).
    """
    if x.numel() == 0:
        return 0.0, 0.0
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf values.")
    return lo, hi


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` if a floating ``x`` has NaN or Inf values."""
    if x.is_floating_point():
        value_range(x, name)


def check_unit_range(x: torch.Tensor, name: str, hint: str) -> None:
    """Raise ``ValueError`` unless ``x`` is finite and within [0, 1] (one pass; bool passes)."""
    if x.dtype == torch.bool or x.numel() == 0:
        return
    lo, hi = value_range(x, name)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; {hint}.")


def activate(
    input: torch.Tensor, sigmoid: bool, softmax: bool, other_act: Callable | None
) -> torch.Tensor:
    """Apply MONAI-style activation to ``[B, C, ...]`` (half inputs are computed in float32).

    ``softmax=True`` on one channel warns and is ignored, as in ``monai.losses.DiceLoss``.
    """
    if input.dtype in _HALF:
        input = input.float()
    if sigmoid or softmax:
        check_finite(input)
    if sigmoid:
        input = torch.sigmoid(input)
    if softmax:
        if input.shape[1] == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        else:
            input = torch.softmax(input, 1)
    if other_act is not None:
        input = other_act(input)
    return input


def indices_to_onehot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices ``[B, 1, *spatial]`` → one-hot ``[B, num_classes, *spatial]`` (uint8: a
    quarter of the memory of float32; the binning kernel reads it directly).

    Raises ``ValueError`` for a target with more than one channel or indices outside
    ``[0, num_classes)`` / non-integer values.
    """
    if target.shape[1] != 1:
        raise ValueError(
            "to_onehot_y=True expects target class indices of shape [B, 1, *spatial], got "
            f"{tuple(target.shape)}; pass to_onehot_y=False for one-hot or soft targets."
        )
    check_class_indices(target.detach(), num_classes, "target")
    return one_hot(target, num_classes=num_classes, dtype=torch.uint8, dim=1)


def check_class_indices(t: torch.Tensor, num_classes: int, what: str) -> None:
    """Refuse values of ``t`` that are not whole class indices in ``[0, num_classes)``.

    Raises:
        ValueError: naming ``what``, the valid range and the range found.
    """
    if not t.numel():
        return
    lo, hi = torch.aminmax(t)
    if float(lo) < 0 or float(hi) > num_classes - 1:
        raise ValueError(
            f"{what} class indices in [0, {num_classes - 1}] expected for {num_classes} classes, "
            f"got [{float(lo):.4g}, {float(hi):.4g}]."
        )
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{what} must be whole class indices, got fractions.")


def prepare_target(
    target: torch.Tensor, num_classes: int, to_onehot_y: bool, stacklevel: int = 3
) -> torch.Tensor:
    """One-hot encode ``target`` if asked (warning and ignoring it for one-channel predictions)."""
    if not to_onehot_y:
        return target
    if num_classes == 1:
        warnings.warn(
            "single channel prediction, `to_onehot_y=True` ignored.", stacklevel=stacklevel
        )
        return target
    return indices_to_onehot(target, num_classes)
