"""nnU-Net v2 inside calibseg (optional extra ``calibseg[nnunet]``).

- :mod:`calibseg.nnunet.loss` — the mL1-ACE term added to nnU-Net's loss (torch only).
- :mod:`calibseg.nnunet.convert` — multi-rater data → one nnU-Net raw dataset per rater.
- :mod:`calibseg.nnunet.trainers` — ``nnUNetTrainer`` subclasses (needs nnunetv2).
- :mod:`calibseg.nnunet.runner` — plan/preprocess, train, predict, ensemble members (needs
  nnunetv2).

This package itself imports nothing of nnU-Net, so ``require_nnunet`` can tell the user how to
install it.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = [
    "INSTALL_HINT",
    "LOSSES",
    "nnunet_available",
    "require_nnunet",
    "study_losses",
    "trainer_path",
]

INSTALL_HINT = (
    "nnU-Net is not installed: pip install 'calibseg[nnunet]' (in a calibseg checkout: make nnunet)"
)

#: ``--loss`` choices of the nnU-Net trainers: nnU-Net's Dice+CE, and Dice+CE + mL1-ACE
LOSSES = ("dicece", "hardl1ace", "softl1ace")


def nnunet_available() -> bool:
    """True when ``nnunetv2`` can be imported."""
    return importlib.util.find_spec("nnunetv2") is not None


def require_nnunet() -> None:
    """Raise RuntimeError with the install command when nnunetv2 is missing."""
    if not nnunet_available():
        raise RuntimeError(INSTALL_HINT)


def study_losses() -> tuple[str, ...]:
    """The trainers' losses as a study names them (``nnunet_<loss>``) when nnunetv2 is
    installed, else ``()``. They train through ``calibseg nnunet``, not MONAI bundles."""
    return tuple(f"nnunet_{loss}" for loss in LOSSES) if nnunet_available() else ()


def trainer_path() -> str:
    """Folder holding calibseg's trainer module, for nnU-Net's ``nnUNet_extTrainer``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")
