"""Trainer rules that need nnU-Net importable but no data."""

import math

import pytest

pytest.importorskip(
    "nnunetv2", reason="nnU-Net extra not installed (make nnunet or pip install 'calibseg[nnunet]')"
)

from calibseg.nnunet.trainers import (  # noqa: E402
    TRAINERS,
    epochs_without_improvement,
    nnUNetTrainerHardL1ACE,
)


def test_epochs_without_improvement_by_hand():
    assert epochs_without_improvement([]) == 0
    assert epochs_without_improvement([0.5]) == 0
    assert epochs_without_improvement([0.5, 0.6, 0.55, 0.58]) == 2  # best 0.6 at epoch 1
    # gains of 0.01 do not count with min_delta 0.05: best stays at epoch 0
    assert epochs_without_improvement([0.5, 0.51, 0.52, 0.53], min_delta=0.05) == 3
    assert epochs_without_improvement([0.5, 0.51, 0.57], min_delta=0.05) == 0
    assert epochs_without_improvement([math.nan, math.nan]) == 2


def test_trainer_names_and_losses():
    assert {k: v.ace_loss for k, v in TRAINERS.items()} == {
        "dicece": None,
        "hardl1ace": "hardl1ace",
        "softl1ace": "softl1ace",
    }
    assert nnUNetTrainerHardL1ACE.__name__ == "nnUNetTrainerHardL1ACE"
