"""Cross-entropy on logits with MONAI-style targets: class indices, one-hot or soft labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from calibseg.losses._inputs import (
    _HALF,
    check_finite,
    check_same_ndim,
    class_weight_tensor,
    value_range,
)

__all__ = ["CrossEntropyLoss"]


def _is_onehot(target: torch.Tensor) -> bool:
    """True if every voxel of ``[B, C, ...]`` holds exactly one 1 and zeros elsewhere."""
    t = target.detach()
    if t.dtype == torch.bool:
        return bool((t.sum(1) == 1).all())
    return bool(((t == 0) | (t == 1)).all()) and bool((t.sum(1) == 1).all())


class CrossEntropyLoss(_Loss):
    """Cross-entropy between logits ``[B, C, *spatial]`` and a MONAI-style target.

    Targets may be class indices ``[B, 1, *spatial]`` (any numeric dtype), one-hot
    ``[B, C, *spatial]`` (converted to indices, so the value equals the index form, weights
    included) or soft/probabilistic labels ``[B, C, *spatial]`` such as the mean of several
    raters' labels (``torch.nn.functional.cross_entropy`` with class probabilities). A
    one-channel input uses binary cross-entropy with logits (``weight`` as ``pos_weight``), as
    ``monai.losses.DiceCELoss`` does. Float16/bfloat16 logits are computed in float32.

    Args:
        weight: non-negative per-class rescaling weights (length C), or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B, 1, *spatial]``).
        label_smoothing: in [0, 1], as in ``torch.nn.CrossEntropyLoss``.

    Example:
        >>> ce = CrossEntropyLoss()
        >>> value = ce(logits, labels)  # [B, C, H, W], labels [B, 1, H, W] or one-hot
    """

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.class_weight: torch.Tensor | None
        self.register_buffer("class_weight", class_weight_tensor(weight))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits ``input`` ``[B, C, *spatial]`` against ``target``."""
        check_same_ndim(input, target)
        n_ch, t_ch = input.shape[1], target.shape[1]
        if (
            t_ch not in (1, n_ch)
            or input.shape[0] != target.shape[0]
            or (input.shape[2:] != target.shape[2:])
        ):
            raise ValueError(
                "target must be class indices [B, 1, *spatial] or one-hot/soft [B, C, *spatial] "
                f"matching the input, got input {tuple(input.shape)} and target "
                f"{tuple(target.shape)}."
            )
        check_finite(input)
        if input.dtype in _HALF:
            input = input.float()
        weight = None
        if self.class_weight is not None:
            weight = self.class_weight.to(input)
            if weight.ndim == 0:
                weight = weight.expand(n_ch)
            if weight.shape[0] != n_ch:
                raise ValueError(
                    f"weight has {weight.shape[0]} entries but the input has {n_ch} classes."
                )
        if n_ch == 1:
            t = target.to(input.dtype)
            return F.binary_cross_entropy_with_logits(
                input, t, pos_weight=weight, reduction=self.reduction
            )

        if t_ch == 1:
            index = target[:, 0]
        elif _is_onehot(target):
            index = target.argmax(1)
        else:
            index = None
        if index is not None:
            t = index.detach()
            lo, hi = torch.aminmax(t.float() if t.dtype == torch.bool else t)
            if float(lo) < 0 or float(hi) > n_ch - 1:
                raise ValueError(
                    f"target class indices must lie in [0, {n_ch - 1}], got values in "
                    f"[{float(lo):.4g}, {float(hi):.4g}]."
                )
            target_t: torch.Tensor = index.long()
        else:
            probs = target.to(input.dtype)
            lo, hi = value_range(probs, "target")
            if lo < 0 or hi > 1:
                raise ValueError(
                    f"soft targets must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                    "give class indices as [B, 1, *spatial]."
                )
            target_t = probs
        f = F.cross_entropy(
            input,
            target_t,
            weight=weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )
        return f.unsqueeze(1) if self.reduction == LossReduction.NONE.value else f
