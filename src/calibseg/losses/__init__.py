"""Calibration losses: hard and soft binned mL1-ACE, their compounds, cross-entropy.

All losses are ``torch.nn.modules.loss._Loss`` subclasses following MONAI's conventions
(``include_background``, ``to_onehot_y``, ``sigmoid``/``softmax``/``other_act``, ``reduction``,
``weight``). Binning goes through :func:`calibseg.binning.binned_sums`.
"""

from calibseg.losses.ace import (
    HardL1ACELoss,
    SoftL1ACELoss,
    hard_binned_calibration,
    soft_binned_calibration,
)
from calibseg.losses.compound import (
    HardL1ACEandCELoss,
    HardL1ACEandDiceCELoss,
    HardL1ACEandDiceLoss,
    SoftL1ACEandCELoss,
    SoftL1ACEandDiceCELoss,
    SoftL1ACEandDiceLoss,
)
from calibseg.losses.cross_entropy import CrossEntropyLoss
from calibseg.losses.deep_supervision import ACEDeepSupervisionLoss, ace_levels

__all__ = [
    "hard_binned_calibration",
    "soft_binned_calibration",
    "HardL1ACELoss",
    "HardL1ACEandCELoss",
    "HardL1ACEandDiceLoss",
    "HardL1ACEandDiceCELoss",
    "SoftL1ACELoss",
    "SoftL1ACEandCELoss",
    "SoftL1ACEandDiceLoss",
    "SoftL1ACEandDiceCELoss",
    "CrossEntropyLoss",
    "ACEDeepSupervisionLoss",
    "ace_levels",
]
