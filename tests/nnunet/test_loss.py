"""The mL1-ACE term inside nnU-Net's loss (torch only; runs without nnU-Net)."""

import math

import pytest
import torch
from torch import nn

from calibseg.nnunet.loss import ACEPlusLoss, make_ace

# Worked by hand with 2 equal-width bins ([0, 0.5), [0.5, 1]):
# class-1 probabilities 0.1, 0.15, 0.8, 0.9 with labels 0, 1, 1, 1:
#   bin 0: mean p 0.125, mean gt 0.5 → 0.375; bin 1: mean p 0.85, mean gt 1 → 0.15; ACE 0.2625
# class 0 (probabilities 0.9, 0.85, 0.2, 0.1; gt 1, 0, 0, 0):
#   bin 0: 0.15 vs 0 → 0.15; bin 1: 0.875 vs 0.5 → 0.375; ACE 0.2625
P1 = [0.1, 0.15, 0.8, 0.9]
LABELS = [0, 1, 1, 1]
ACE_BY_HAND = 0.2625


class Zero(nn.Module):
    def forward(self, logits, target):
        return logits.sum() * 0.0


class Const(nn.Module):
    def forward(self, logits, target):
        return torch.tensor(0.75)


def _softmax_logits(p1):
    p = torch.tensor(p1, dtype=torch.float64)
    # logits whose softmax over 2 classes is exactly (1 - p, p)
    return torch.stack([torch.log(1 - p), torch.log(p)])[None, :, :, None].float()  # [1, 2, N, 1]


def test_label_training_adds_weighted_hand_computed_ace():
    loss = ACEPlusLoss(Zero(), make_ace("hardl1ace", num_bins=2), ace_weight=2.0)
    target = torch.tensor(LABELS)[None, None, :, None]
    value = loss(_softmax_logits(P1), target)
    assert value.item() == pytest.approx(2.0 * ACE_BY_HAND, abs=1e-5)


def test_ignore_label_voxels_are_left_out():
    loss = ACEPlusLoss(Zero(), make_ace("hardl1ace", num_bins=2), ace_weight=1.0, ignore_label=2)
    # two extra voxels with the ignore label and confident, wrong-looking probabilities
    logits = _softmax_logits(P1 + [0.99, 0.01])
    target = torch.tensor(LABELS + [2, 2])[None, None, :, None]
    assert loss(logits, target).item() == pytest.approx(ACE_BY_HAND, abs=1e-5)
    # without the ignore label they would count (as class 0 after nnU-Net's ignore handling)
    plain = ACEPlusLoss(Zero(), make_ace("hardl1ace", num_bins=2), 1.0, ignore_label=None)
    assert plain(logits, torch.tensor(LABELS + [0, 0])[None, None, :, None]).item() != (
        pytest.approx(ACE_BY_HAND, abs=1e-3)
    )


def test_regions_use_sigmoid_and_the_ignore_channel():
    # one region channel; sigmoid(logit(p)) = p; a single channel gives the class-1 value
    p = torch.tensor(P1 + [0.95])
    logits = torch.log(p / (1 - p))[None, None, :, None]
    region = torch.tensor([0, 1, 1, 1, 0])
    ignore = torch.tensor([0, 0, 0, 0, 1])
    target = torch.stack([region, ignore])[None, :, :, None]
    loss = ACEPlusLoss(Zero(), make_ace("hardl1ace", 2), 1.0, regions=True, has_ignore_channel=True)
    assert loss(logits, target).item() == pytest.approx(ACE_BY_HAND, abs=1e-5)


def test_base_loss_is_kept_and_weight_zero_is_base_alone():
    target = torch.tensor(LABELS)[None, None, :, None]
    logits = _softmax_logits(P1)
    with_ace = ACEPlusLoss(Const(), make_ace("hardl1ace", 2), 0.5)
    assert with_ace(logits, target).item() == pytest.approx(0.75 + 0.5 * ACE_BY_HAND, abs=1e-5)
    assert ACEPlusLoss(Const(), make_ace("softl1ace", 2), 0.0)(logits, target).item() == 0.75


def test_soft_binning_by_hand_and_gradient_reaches_logits():
    # soft binning, 2 bins (centres 0.25, 0.75): p ≤ 0.25 all to bin 0, p ≥ 0.75 all to bin 1,
    # class 1: p = 0.5 splits 1/2 : 1/2. Voxels p = 0.1 (gt 0), 0.5 (gt 1), 0.9 (gt 1):
    #   bin 0: weight 1.5, sum p 0.1 + 0.25 = 0.35, sum gt 0.5 → |0.35 - 0.5| / 1.5 = 0.1
    #   bin 1: weight 1.5, sum p 0.25 + 0.9 = 1.15, sum gt 1.5 → 0.35 / 1.5
    # class 0 is the mirror image (p 0.9, 0.5, 0.1; gt 1, 0, 0): the same two gaps.
    expected = (0.1 + 0.35 / 1.5) / 2
    logits = _softmax_logits([0.1, 0.5, 0.9]).requires_grad_(True)
    target = torch.tensor([0, 1, 1])[None, None, :, None]
    value = ACEPlusLoss(Zero(), make_ace("softl1ace", 2), 1.0)(logits, target)
    assert value.item() == pytest.approx(expected, abs=1e-5)
    value.backward()
    assert math.isfinite(float(logits.grad.abs().sum())) and float(logits.grad.abs().sum()) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ACE loss"):
        make_ace("focal")
    with pytest.raises(ValueError, match="ace_weight"):
        ACEPlusLoss(Zero(), make_ace("hardl1ace"), -1.0)


def test_empty_classes_are_left_out_of_the_mean_by_default():
    # 3 classes, 4 voxels, 2 bins (centres 0.25, 0.75); class 2 is absent from the target.
    # hard: class 0: p 0.7, 0.6 (gt 1) | 0.2, 0.3 (gt 0): |0.65 - 1| = 0.35, |0.25 - 0| = 0.25
    #   → 0.3; class 1 (the same values) → 0.3; class 2: p 0.1 everywhere, gt 0 → 0.1
    # soft: class 0 weights to bin 0 / bin 1: 0.7 → 0.1/0.9, 0.6 → 0.3/0.7, 0.2 → 1/0, 0.3 →
    #   0.9/0.1; bin 0: mean p 0.72/2.3, mean gt 0.4/2.3 → 0.32/2.3; bin 1: mean p 1.08/1.7,
    #   mean gt 1.6/1.7 → 0.52/1.7; ACE (0.32/2.3 + 0.52/1.7)/2; class 1 the same; class 2 0.1
    # the paper's default leaves class 2 out: mean of 2 pairs; with it: mean of 3
    soft = (0.32 / 2.3 + 0.52 / 1.7) / 2
    expected = {"hardl1ace": (0.3, 0.7 / 3), "softl1ace": (soft, (2 * soft + 0.1) / 3)}
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]], dtype=torch.float64
    )
    logits = torch.log(probs).T[None, :, :, None].float()  # [1, 3, 4, 1]
    target = torch.tensor([0, 0, 1, 1])[None, None, :, None]
    for kind, (left_out, kept) in expected.items():
        default = ACEPlusLoss(Zero(), make_ace(kind, num_bins=2), 1.0)
        with_empty = ACEPlusLoss(Zero(), make_ace(kind, 2, ignore_empty_classes=False), 1.0)
        assert default(logits, target).item() == pytest.approx(left_out, abs=1e-5)
        assert with_empty(logits, target).item() == pytest.approx(kept, abs=1e-5)
