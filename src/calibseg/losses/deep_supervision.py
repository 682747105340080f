"""Deep supervision with a choice of the levels at which the mL1-ACE term applies.

A per-image ACE over K bins is an average of per-bin gaps whose precision depends on the number
of voxels in each bin. Deep-supervision heads of a network predict at 1/2, 1/4, 1/8 … of the
input resolution, so a 32³ crop gives 4,096 voxels per image at the second level and 64 at the
fourth: there the per-bin means rest on a handful of voxels (or, for soft binning, on weights
just above ``empty_weight``) and the term is mostly noise with a large gradient
(``docs/calibration_study.md`` has the measurements). :class:`ACEDeepSupervisionLoss` therefore
lets the baseline (Dice / CE) supervise every level as MONAI's ``DeepSupervisionLoss`` does, and
applies the ACE term only where it is estimated from enough voxels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

from calibseg.losses.ace import _L1ACELoss
from calibseg.losses.compound import _ACECompound

__all__ = ["ACEDeepSupervisionLoss", "ace_levels"]


def ace_levels(shapes: list[tuple[int, ...]], ace_at: str | int) -> list[bool]:
    """Which deep-supervision levels get the ACE term.

    Args:
        shapes: spatial shape of each level's output, full resolution first.
        ace_at: ``"full"`` (the full-resolution output only), ``"all"`` (every level, as
            MONAI's ``DeepSupervisionLoss`` around an ACE loss does), or an integer N: the levels
            with at least N voxels per image (the full-resolution level always).

    Returns:
        One flag per level.

    Raises:
        ValueError: for another ``ace_at``.
    """
    if ace_at == "full":
        return [i == 0 for i in range(len(shapes))]
    if ace_at == "all":
        return [True] * len(shapes)
    if isinstance(ace_at, bool) or not isinstance(ace_at, int) or ace_at < 0:
        raise ValueError(f"ace_at must be 'full', 'all' or an integer >= 0, got {ace_at!r}.")
    return [i == 0 or math.prod(s) >= ace_at for i, s in enumerate(shapes)]


class ACEDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss`` with the ACE term restricted to chosen levels.

    Args:
        loss: the per-level loss: a calibseg ACE compound (ACE + Dice / CE), a bare ACE loss, or
            any other loss (then this is exactly MONAI's ``DeepSupervisionLoss``).
        weight_mode, weights: level weights as in MONAI (``"exp"``: 1, 0.5, 0.25 …).
        ace_at: where the ACE term applies (see :func:`ace_levels`); default ``"full"``. At the
            other levels a compound contributes its baseline part only and a bare ACE loss
            nothing.

    Example:
        >>> loss = ACEDeepSupervisionLoss(HardL1ACEandDiceCELoss(), ace_at="full")
        >>> value = loss([logits, logits_half, logits_quarter], onehot)  # targets resized
    """

    def __init__(
        self,
        loss: _Loss,
        weight_mode: str = "exp",
        weights: list[float] | None = None,
        ace_at: str | int = "full",
    ) -> None:
        super().__init__(loss, weight_mode=weight_mode, weights=weights)
        ace_levels([(1,)], ace_at)  # validate early
        self.ace_at = ace_at

    def _level_loss(self, input: torch.Tensor, target: torch.Tensor, with_ace: bool):
        if input.shape[2:] != target.shape[2:]:
            target = F.interpolate(target, size=input.shape[2:], mode=self.interp_mode)
        if with_ace:
            return self.loss(input, target)
        if isinstance(self.loss, _ACECompound):
            return self.loss(input, target, ace=False)
        if isinstance(self.loss, _L1ACELoss):
            return None
        return self.loss(input, target)

    def forward(
        self, input: None | torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        """Weighted sum over levels.

        Args:
            input: logits ``[B, C, *spatial]`` or a list of them, full resolution first.
            target: targets at full resolution (resized with nearest-exact per level).

        Raises:
            ValueError: if ``input`` is None.
        """
        if input is None:
            raise ValueError("input must be a tensor or a list of tensors, got None.")
        if not isinstance(input, (list, tuple)):
            return self.loss(input.float(), target)
        weights = self.get_weights(levels=len(input))
        flags = ace_levels([tuple(x.shape[2:]) for x in input], self.ace_at)
        total = torch.zeros((), dtype=torch.float32, device=target.device)
        for x, w, with_ace in zip(input, weights, flags, strict=False):
            part = self._level_loss(x.float(), target, with_ace)
            if part is not None:
                total = total + w * part
        return total
