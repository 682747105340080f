"""nnU-Net trainers of calibseg (importing this package needs nnunetv2)."""

from calibseg.nnunet.trainers.calibseg_trainers import (
    OPTIONS_FILE,
    TRAINERS,
    EarlyStop,
    epochs_without_improvement,
    nnUNetTrainerCalibseg,
    nnUNetTrainerHardL1ACE,
    nnUNetTrainerSoftL1ACE,
)

__all__ = [
    "OPTIONS_FILE",
    "TRAINERS",
    "EarlyStop",
    "epochs_without_improvement",
    "nnUNetTrainerCalibseg",
    "nnUNetTrainerHardL1ACE",
    "nnUNetTrainerSoftL1ACE",
]
