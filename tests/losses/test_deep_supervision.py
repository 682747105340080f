"""ACEDeepSupervisionLoss: where the ACE term applies, checked against MONAI's own losses."""

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceLoss

from calibseg.losses import (
    ACEDeepSupervisionLoss,
    HardL1ACEandDiceCELoss,
    HardL1ACELoss,
    SoftL1ACEandDiceCELoss,
    ace_levels,
)


def _levels(seed=0, b=2, c=3, size=16, n=3):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, c, *(size // 2**i,) * 3, generator=g) * 3 for i in range(n)]
    lab = torch.randint(0, c, (b, size, size, size), generator=g)
    onehot = F.one_hot(lab, c).movedim(-1, 1).float()
    return xs, onehot


def test_ace_levels_rules():
    shapes = [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    assert ace_levels(shapes, "full") == [True, False, False]
    assert ace_levels(shapes, "all") == [True, True, True]
    assert ace_levels(shapes, 4096) == [True, True, False]  # 16³ = 4096 voxels per image
    assert ace_levels(shapes, 10**9) == [True, False, False]  # full resolution always
    for bad in ("half", -1, 1.5, True):
        with pytest.raises(ValueError, match="ace_at"):
            ace_levels(shapes, bad)


@pytest.mark.parametrize("cls", [HardL1ACEandDiceCELoss, SoftL1ACEandDiceCELoss])
def test_all_levels_is_monai_deep_supervision(cls):
    xs, y = _levels()
    inner = cls()
    ours = ACEDeepSupervisionLoss(inner, ace_at="all")(xs, y)
    ref = DeepSupervisionLoss(inner, weight_mode="exp")(xs, y)
    torch.testing.assert_close(ours, ref)


def test_full_resolution_only_adds_plain_dice_ce_below():
    xs, y = _levels(seed=1)
    inner = HardL1ACEandDiceCELoss(ace_weight=1.0, ce_weight=1.0, dice_weight=1.0)
    loss = ACEDeepSupervisionLoss(inner, ace_at="full")(xs, y)
    # expectation from MONAI's Dice and torch's cross-entropy, level weights 1, 1/2, 1/4 ("exp")
    ace = HardL1ACELoss(softmax=True)
    expected = ace(xs[0], y)
    for i, x in enumerate(xs):
        t = F.interpolate(y, size=x.shape[2:], mode="nearest-exact")
        part = DiceLoss(softmax=True)(x, t) + F.cross_entropy(x, t.argmax(1))
        expected = expected + 0.5**i * part
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_bare_ace_loss_gives_coarse_levels_no_gradient():
    xs, y = _levels(seed=2)
    xs = [x.requires_grad_() for x in xs]
    ACEDeepSupervisionLoss(HardL1ACELoss(softmax=True), ace_at="full")(xs, y).backward()
    assert xs[0].grad is not None and xs[0].grad.abs().sum() > 0
    assert xs[1].grad is None and xs[2].grad is None


def test_compound_without_ace_equals_zero_ace_weight():
    xs, y = _levels(seed=3)
    a = SoftL1ACEandDiceCELoss()(xs[0], y, ace=False)
    b = SoftL1ACEandDiceCELoss(ace_weight=0.0)(xs[0], y)
    torch.testing.assert_close(a, b)


def test_single_tensor_and_none():
    xs, y = _levels(seed=4)
    inner = HardL1ACEandDiceCELoss()
    torch.testing.assert_close(ACEDeepSupervisionLoss(inner)(xs[0], y), inner(xs[0], y))
    with pytest.raises(ValueError, match="None"):
        ACEDeepSupervisionLoss(inner)(None, y)
