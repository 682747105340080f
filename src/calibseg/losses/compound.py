"""mL1-ACE added to cross-entropy, Dice or Dice + cross-entropy.

All compound losses take **logits** ``[B, C, *spatial]``. Unless ``ace_params`` /
``dice_params`` choose an activation themselves (``softmax``, ``sigmoid`` or ``other_act``),
a softmax over channels is computed once and fed to the ACE and Dice parts; the cross-entropy
part always works on the logits and on class indices (one-hot targets are converted; soft
targets use the probabilistic cross-entropy). With the default weights of 1 the loss is
``0.5 * ACE + 0.5 * CE`` (or Dice), ``0.33`` each for the three-part losses, the defaults and
positional order of the paper's code. Set ``ace_weight=1`` and the other weights to 1 to *add*
the ACE term to the usual baseline, as calibseg's bundles do.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from calibseg.losses._inputs import activate, check_same_ndim, prepare_target
from calibseg.losses.ace import HardL1ACELoss, SoftL1ACELoss, _L1ACELoss
from calibseg.losses.cross_entropy import CrossEntropyLoss

__all__ = [
    "HardL1ACEandCELoss",
    "HardL1ACEandDiceLoss",
    "HardL1ACEandDiceCELoss",
    "SoftL1ACEandCELoss",
    "SoftL1ACEandDiceLoss",
    "SoftL1ACEandDiceCELoss",
]

_ACTIVATIONS = ("softmax", "sigmoid", "other_act")


def _check_weight(name: str, value: float) -> float:
    v = float(value)
    if not v >= 0.0 or v == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


def _part_params(name: str, params: dict | None, to_onehot_y: bool) -> tuple[dict, bool]:
    """Copy of ``params`` without ``to_onehot_y`` and whether the part uses the shared softmax."""
    params = dict(params or {})
    if "to_onehot_y" in params and bool(params.pop("to_onehot_y")) != to_onehot_y:
        raise ValueError(
            f"{name} sets to_onehot_y differently from the compound loss; set to_onehot_y on "
            "the compound loss only."
        )
    shared = not any(k in params for k in _ACTIVATIONS)
    return params, shared


class _ACECompound(_Loss):
    """Weighted sum of an mL1-ACE loss and Dice and/or cross-entropy parts."""

    _ace_cls: type[_L1ACELoss] = HardL1ACELoss

    def _setup(
        self,
        to_onehot_y: bool,
        ace_weight: float,
        ace_params: dict | None,
        ce_weight: float | None = None,
        ce_params: dict | None = None,
        dice_weight: float | None = None,
        dice_params: dict | None = None,
    ) -> None:
        self.to_onehot_y = bool(to_onehot_y)
        self.ace_weight = _check_weight("ace_weight", ace_weight)
        params, self._ace_shared = _part_params("ace_params", ace_params, self.to_onehot_y)
        self.ace = self._ace_cls(**params)
        self.dice: DiceLoss | None = None
        self.ce: CrossEntropyLoss | None = None
        self._dice_shared = False
        if dice_weight is not None:
            self.dice_weight = _check_weight("dice_weight", dice_weight)
            params, self._dice_shared = _part_params("dice_params", dice_params, self.to_onehot_y)
            self.dice = DiceLoss(**params)
        if ce_weight is not None:
            self.ce_weight = _check_weight("ce_weight", ce_weight)
            self.ce = CrossEntropyLoss(**(ce_params or {}))

    def forward(self, input: torch.Tensor, target: torch.Tensor, ace: bool = True) -> torch.Tensor:
        """Weighted sum of the parts.

        Args:
            input: logits ``[B, C, *spatial]``.
            target: class indices ``[B, 1, *spatial]`` with ``to_onehot_y=True``, else one-hot or
                soft labels ``[B, C, *spatial]``.
            ace: False leaves the ACE term out (the baseline part alone), e.g. at the coarse
                levels of deep supervision (see :class:`calibseg.losses.ACEDeepSupervisionLoss`).

        Returns:
            ``ace_weight * ACE (+ dice_weight * Dice) (+ ce_weight * CE)``, each part reduced
            as its own ``reduction`` says (scalars by default).
        """
        check_same_ndim(input, target)
        labels = prepare_target(target, input.shape[1], self.to_onehot_y)
        probs = None
        if (ace and self._ace_shared) or self._dice_shared:
            probs = activate(input, sigmoid=False, softmax=True, other_act=None)
        total = torch.zeros((), dtype=input.dtype, device=input.device)
        if ace:
            total = self.ace_weight * self.ace(probs if self._ace_shared else input, labels)
        if self.dice is not None:
            dice_in = probs if self._dice_shared else input
            total = total + self.dice_weight * self.dice(dice_in, labels.to(dice_in.dtype))
        if self.ce is not None:
            # the one-hot labels, as the paper's code: class weights then normalise by the voxel
            # count (torch's rule for probability targets)
            total = total + self.ce_weight * self.ce(input, labels)
        return total


class _ACEandCE(_ACECompound):
    def __init__(
        self,
        ace_weight: float = 0.5,
        ce_weight: float = 0.5,
        to_onehot_y: bool = False,
        ace_params: dict | None = None,
        ce_params: dict | None = None,
    ) -> None:
        super().__init__()
        self._setup(to_onehot_y, ace_weight, ace_params, ce_weight=ce_weight, ce_params=ce_params)


class _ACEandDice(_ACECompound):
    def __init__(
        self,
        ace_weight: float = 0.5,
        dice_weight: float = 0.5,
        to_onehot_y: bool = False,
        ace_params: dict | None = None,
        dice_params: dict | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            to_onehot_y, ace_weight, ace_params, dice_weight=dice_weight, dice_params=dice_params
        )


class _ACEandDiceCE(_ACECompound):
    """Keyword order of the paper's code: hard ``(ace, ce, dice)``, soft ``(ace, dice, ce)``."""

    def _init_parts(
        self,
        to_onehot_y: bool,
        ace_weight: float,
        ce_weight: float,
        dice_weight: float,
        ace_params: dict | None,
        dice_params: dict | None,
        ce_params: dict | None,
    ) -> None:
        self._setup(
            to_onehot_y,
            ace_weight,
            ace_params,
            ce_weight=ce_weight,
            ce_params=ce_params,
            dice_weight=dice_weight,
            dice_params=dice_params,
        )


_ARGS_DOC = """
    Args:
        to_onehot_y: target is class indices ``[B, 1, *spatial]``; converted to one-hot once for
            all parts. Default False.
        ace_weight, ce_weight, dice_weight: non-negative weights of the parts this loss has;
            default 0.5 each (two parts) or 0.33 each (three parts), as in the paper's code.
        ace_params: keyword arguments of the ACE loss (``num_bins``, ``include_background``,
            ``reduction``, ``weight``, ``ignore_empty_classes``, ...); without an activation key
            the shared softmax is used.
        dice_params: (Dice variants) keyword arguments of ``monai.losses.DiceLoss``; same
            activation rule.
        ce_params: (CE variants) keyword arguments of :class:`calibseg.losses.CrossEntropyLoss`,
            i.e. those of ``torch.nn.CrossEntropyLoss`` (``weight``, ``reduction``,
            ``label_smoothing``, ``ignore_index``); the part gets the one-hot labels.

    Example:
        >>> loss = {name}(to_onehot_y=True)
        >>> value = loss(logits, labels)  # logits [B, C, H, W(, D)], labels [B, 1, H, W(, D)]
"""


class HardL1ACEandCELoss(_ACEandCE):
    _ace_cls = HardL1ACELoss


class HardL1ACEandDiceLoss(_ACEandDice):
    _ace_cls = HardL1ACELoss


class HardL1ACEandDiceCELoss(_ACEandDiceCE):
    _ace_cls = HardL1ACELoss

    def __init__(
        self,
        ace_weight: float = 0.33,
        ce_weight: float = 0.33,
        dice_weight: float = 0.33,
        to_onehot_y: bool = False,
        ace_params: dict | None = None,
        dice_params: dict | None = None,
        ce_params: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_parts(
            to_onehot_y, ace_weight, ce_weight, dice_weight, ace_params, dice_params, ce_params
        )


class SoftL1ACEandCELoss(_ACEandCE):
    _ace_cls = SoftL1ACELoss


class SoftL1ACEandDiceLoss(_ACEandDice):
    _ace_cls = SoftL1ACELoss


class SoftL1ACEandDiceCELoss(_ACEandDiceCE):
    _ace_cls = SoftL1ACELoss

    def __init__(
        self,
        ace_weight: float = 0.33,
        dice_weight: float = 0.33,
        ce_weight: float = 0.33,
        to_onehot_y: bool = False,
        ace_params: dict | None = None,
        dice_params: dict | None = None,
        ce_params: dict | None = None,
    ) -> None:
        super().__init__()
        self._init_parts(
            to_onehot_y, ace_weight, ce_weight, dice_weight, ace_params, dice_params, ce_params
        )


for _cls, _kind, _parts in (
    (HardL1ACEandCELoss, "Hard", "cross-entropy"),
    (HardL1ACEandDiceLoss, "Hard", "Dice"),
    (HardL1ACEandDiceCELoss, "Hard", "Dice + cross-entropy"),
    (SoftL1ACEandCELoss, "Soft", "cross-entropy"),
    (SoftL1ACEandDiceLoss, "Soft", "Dice"),
    (SoftL1ACEandDiceCELoss, "Soft", "Dice + cross-entropy"),
):
    _cls.__doc__ = (
        f"{_kind}-binned mL1-ACE plus {_parts}, on logits (softmax applied for ACE and Dice).\n"
        + _ARGS_DOC.replace("{name}", _cls.__name__)
    )
