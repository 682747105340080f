"""Marginal L1 average calibration error (mL1-ACE) losses, hard and soft binned.

For every image b and class c the probabilities are binned (``num_bins`` equal-width bins on
[0, 1]); in each non-empty bin k the gap ``|mean_p[b, c, k] - mean_gt[b, c, k]|`` is taken and
the loss of (b, c) is the mean gap over non-empty bins. Binning goes through
:func:`calibseg.binning.binned_sums` (one vectorised pass, differentiable w.r.t. the
probabilities): hard binning gives each voxel to one bin; soft binning splits its weight between
the two nearest bin centres, so bin membership itself is differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from calibseg.binning import (
    DEFAULT_EMPTY_WEIGHT,
    binned_means,
    binned_sums,
    check_num_bins,
    validate_pair,
)
from calibseg.losses._inputs import (
    activate,
    check_activation,
    check_same_ndim,
    check_unit_range,
    class_weight_tensor,
    prepare_target,
)

__all__ = [
    "hard_binned_calibration",
    "soft_binned_calibration",
    "HardL1ACELoss",
    "SoftL1ACELoss",
]

_RANGE_HINT = "pass logits with softmax=True (multi-class) or sigmoid=True (multi-label)"
_TARGET_HINT = (
    "give one-hot or soft labels, or class indices [B, 1, *spatial] with to_onehot_y=True"
)


def _check_pair(
    input: torch.Tensor,
    target: torch.Tensor,
    target_checked: bool = False,
    ranges: bool = True,
) -> None:
    """Same shapes (via ``validate_pair``), a floating-point input, then (with ``ranges``) one
    range/finiteness pass per tensor, raising ValueError with a hint for the user."""
    validate_pair(input, target, check_range=False)
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}.")
    if ranges:
        check_unit_range(input, "input", _RANGE_HINT)
        if not target_checked:
            check_unit_range(target, "target", _TARGET_HINT)


def _sums(input: torch.Tensor, target: torch.Tensor, target_checked: bool, **kw) -> tuple:
    """:func:`binned_sums` with the range check folded into the binning pass; a value outside
    [0, 1] is then reported by the loss's own checks (same messages as before the pass)."""
    try:
        return binned_sums(input, target, check_range=True, **kw)
    except ValueError:
        _check_pair(input, target, target_checked)
        raise


def _check_empty_weight(empty_weight: float) -> float:
    ew = float(empty_weight)
    if not ew >= 0.0 or ew == float("inf"):
        raise ValueError(f"empty_weight must be a finite number >= 0, got {empty_weight!r}.")
    return ew


def hard_binned_calibration(
    input: torch.Tensor, target: torch.Tensor, num_bins: int = 20, right: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard-binned calibration statistics of probabilities ``input`` against ``target``.

    Args:
        input: probabilities ``[B, C, *spatial]`` in [0, 1].
        target: one-hot or soft targets, same shape, in [0, 1].
        num_bins: number of equal-width bins on [0, 1].
        right: with ``False`` a value on an inner bin edge falls in the lower bin.

    Returns:
        ``(mean_p, mean_gt, counts)``, each ``[B, C, num_bins]``: mean probability, mean target
        and voxel count per bin; means are NaN in empty bins. Differentiable w.r.t. ``input``.
    """
    check_num_bins(num_bins)
    _check_pair(input, target)
    return binned_means(input, target, num_bins=num_bins, right=right, soft=False)


def soft_binned_calibration(
    input: torch.Tensor,
    target: torch.Tensor,
    num_bins: int = 20,
    empty_weight: float = DEFAULT_EMPTY_WEIGHT,
    right: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft-binned calibration statistics of probabilities ``input`` against ``target``.

    Each value splits its unit weight linearly between the two bins whose centres bracket it.

    Args:
        input: probabilities ``[B, C, *spatial]`` in [0, 1].
        target: one-hot or soft targets, same shape, in [0, 1].
        num_bins: number of equal-width bins on [0, 1].
        empty_weight: a bin whose summed weight is below this counts as empty.
        right: kept for signature compatibility with :func:`hard_binned_calibration`.

    Returns:
        ``(mean_p, mean_gt, counts)``, each ``[B, C, num_bins]``: weighted means per bin (NaN
        in empty bins) and the summed weight per bin. Differentiable w.r.t. ``input``.
    """
    check_num_bins(num_bins)
    empty_weight = _check_empty_weight(empty_weight)
    _check_pair(input, target)
    return binned_means(
        input, target, num_bins=num_bins, right=right, soft=True, empty_weight=empty_weight
    )


class _L1ACELoss(_Loss):
    """Shared implementation of the hard and soft mL1-ACE losses."""

    _soft: bool = False

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        right: bool = False,
        ignore_empty_classes: bool = True,
        empty_weight: float = 0.0,
        membership_grad: bool = True,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        check_activation(sigmoid, softmax, other_act)
        self.num_bins = check_num_bins(num_bins)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.right = right
        self.ignore_empty_classes = ignore_empty_classes
        self.empty_weight = _check_empty_weight(empty_weight)
        self.membership_grad = bool(membership_grad)
        self.class_weight: torch.Tensor | None
        self.register_buffer("class_weight", class_weight_tensor(weight))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` against ``target``.

        Args:
            input: ``[B, C, *spatial]`` logits (with ``softmax``/``sigmoid``/``other_act``) or
                probabilities in [0, 1]; float16/bfloat16 are computed in float32.
            target: one-hot or soft ``[B, C, *spatial]`` in [0, 1], or class indices
                ``[B, 1, *spatial]`` with ``to_onehot_y=True``.

        Returns:
            A scalar for ``"mean"``/``"sum"``; ``[B, C, 1, ...]`` (broadcastable to the input)
            for ``"none"``, where ignored empty classes are 0. Float32 (float64 for float64
            input).
        """
        check_same_ndim(input, target)
        n_pred_ch = input.shape[1]
        input = activate(input, self.sigmoid, self.softmax, self.other_act)
        target = prepare_target(target, n_pred_ch, self.to_onehot_y)
        if input.shape != target.shape:
            raise ValueError(
                f"input and target must have the same shape, got {tuple(input.shape)} and "
                f"{tuple(target.shape)}"
                + ("" if self.to_onehot_y else "; for class indices set to_onehot_y=True")
                + "."
            )
        target_checked = self.to_onehot_y and n_pred_ch > 1  # built here: one-hot, valid
        if not self.include_background and n_pred_ch > 1:
            input, target = input[:, 1:], target[:, 1:]
        _check_pair(input, target, target_checked, ranges=False)  # ranges: in the binning pass

        if self._soft and not self.membership_grad and input.requires_grad:
            # bin weights of the detached probabilities; sum_p binned as a "target" so that
            # its gradient is the bin weight alone (no derivative of the split itself)
            fixed = input.detach()
            w, _, sum_gt = _sums(fixed, target, target_checked, num_bins=self.num_bins, soft=True)
            _, _, sum_p = binned_sums(fixed, input, num_bins=self.num_bins, soft=True)
        else:
            w, sum_p, sum_gt = _sums(
                input,
                target,
                target_checked,
                num_bins=self.num_bins,
                right=self.right,
                soft=self._soft,
            )
        valid = (w > 0) & (w >= self.empty_weight)
        gap = (sum_p - sum_gt).abs() / torch.where(valid, w, torch.ones_like(w))
        gap = torch.where(valid, gap, torch.zeros_like(gap))
        f = gap.sum(-1) / valid.sum(-1).clamp_min(1)  # [B, C]

        num_classes = f.shape[1]
        if self.class_weight is not None and num_classes != 1:
            cw = self.class_weight.to(f)
            if cw.ndim == 1 and cw.shape[0] != num_classes:
                raise ValueError(
                    f"weight has {cw.shape[0]} entries but the loss sees {num_classes} classes; "
                    "with include_background=False leave out the background weight."
                )
            f = f * cw

        mask = None
        if self.ignore_empty_classes:
            mask = (sum_gt.detach().sum(-1) > 0).to(f.dtype)
            f = f * mask
        if self.reduction == LossReduction.MEAN.value:
            if mask is None:
                return f.mean()
            return f.sum() / mask.sum().clamp_min(1)
        if self.reduction == LossReduction.SUM.value:
            return f.sum()
        if self.reduction == LossReduction.NONE.value:
            return f.view(*f.shape, *([1] * (input.ndim - 2)))
        raise ValueError(
            f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].'
        )


class HardL1ACELoss(_L1ACELoss):
    """Hard-binned marginal L1 average calibration error loss (mL1-ACE).

    Per image and class: the mean over non-empty bins of ``|mean_p - mean_gt|`` with each voxel
    in exactly one bin; then class ``weight`` and ``reduction`` as in ``monai.losses.DiceLoss``.
    Gradients flow through the bin means (bin membership is piecewise constant).

    Args:
        num_bins: number of equal-width bins on [0, 1] (>= 1). Default 20.
        include_background: if False, channel 0 is left out (ignored for one channel).
        to_onehot_y: convert class indices ``[B, 1, ...]`` to one-hot with ``input.shape[1]``
            classes (warns and is ignored for a one-channel input, as in MONAI).
        sigmoid: apply a sigmoid to ``input`` first (multi-label).
        softmax: apply a softmax over channels first (warns and is ignored for one channel).
        other_act: any other activation callable; at most one of the three may be set.
        reduction: ``"mean"`` (average over images and classes), ``"sum"`` or ``"none"``
            (``[B, C, 1, ...]``).
        weight: per-class non-negative weights (scalar or length C, without the background when
            ``include_background=False``) multiplying each class's loss; mean stays a plain mean.
        right: with ``False`` a value on an inner bin edge falls in the lower bin.
        ignore_empty_classes: leave out (image, class) pairs whose target is all zero; ``"mean"``
            then averages over the remaining pairs only (masked mean, so the scale does not shrink
            as more classes are empty); ``"none"`` gives 0 for them. Default True, as in the
            paper's code (whose ``"mean"`` divides by all pairs instead; see the README,
            "Coming from the paper's code").

    Example:
        >>> loss = HardL1ACELoss(softmax=True, to_onehot_y=True)
        >>> value = loss(logits, labels)  # logits [B, C, H, W(, D)], labels [B, 1, H, W(, D)]
    """

    _soft = False

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        right: bool = False,
        ignore_empty_classes: bool = True,
    ) -> None:
        super().__init__(
            num_bins=num_bins,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            weight=weight,
            right=right,
            ignore_empty_classes=ignore_empty_classes,
            empty_weight=0.0,
        )


class SoftL1ACELoss(_L1ACELoss):
    """Soft-binned marginal L1 average calibration error loss (mL1-ACE, soft binning).

    As :class:`HardL1ACELoss`, but each probability splits its unit weight linearly between the
    two bins whose centres bracket it (all of it to the end bin beyond the outermost centres),
    so the loss is also differentiable through bin membership. Bins whose summed weight is
    below ``empty_weight`` count as empty.

    Args:
        num_bins, include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
        weight, right, ignore_empty_classes: as in :class:`HardL1ACELoss` (``right`` has no
            effect on soft binning; it is accepted for a uniform signature).
        empty_weight: minimum summed weight of a non-empty bin. Default 0.01. (Positional
            order as in the paper's code: ``..., weight, empty_weight, right,
            ignore_empty_classes``.)
        membership_grad: if True (default) the gradient is the exact derivative, including
            the change of each voxel's split between its two bins (slope ``num_bins`` per unit
            probability, scaled by ``1 / bin weight``); this term dominates the gradient of a
            confident network and is nearly orthogonal to the Dice/CE gradient. If False the
            split is held fixed in the backward pass and gradients flow only through the
            per-bin means (as in hard binning); the loss value is unchanged.

    Example:
        >>> loss = SoftL1ACELoss(softmax=True, to_onehot_y=True)
        >>> value = loss(logits, labels)
    """

    _soft = True

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        weight: Sequence[float] | float | int | torch.Tensor | None = None,
        empty_weight: float = DEFAULT_EMPTY_WEIGHT,
        right: bool = False,
        ignore_empty_classes: bool = True,
        membership_grad: bool = True,
    ) -> None:
        super().__init__(
            num_bins=num_bins,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            weight=weight,
            right=right,
            ignore_empty_classes=ignore_empty_classes,
            empty_weight=empty_weight,
            membership_grad=membership_grad,
        )
