"""`src.losses` of the mL1-ACE paper's code → `calibseg.losses`: same calls, same numbers.

The parameter lists below are the paper's public signatures (names, order, defaults) as
published in its repository; the expected values are derived by hand on tiny inputs or come
from torch / MONAI.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

import calibseg.losses as L

_ACT = [
    ("num_bins", 20),
    ("include_background", True),
    ("to_onehot_y", False),
    ("sigmoid", False),
    ("softmax", False),
    ("other_act", None),
    ("reduction", "mean"),
    ("weight", None),
]
PAPER = {
    "hard_binned_calibration": [
        ("input", None),
        ("target", None),
        ("num_bins", 20),
        ("right", False),
    ],
    "soft_binned_calibration": [
        ("input", None),
        ("target", None),
        ("num_bins", 20),
        ("empty_weight", 0.01),
        ("right", False),
    ],
    "HardL1ACELoss": [*_ACT, ("right", False), ("ignore_empty_classes", True)],
    "SoftL1ACELoss": [
        *_ACT,
        ("empty_weight", 0.01),
        ("right", False),
        ("ignore_empty_classes", True),
    ],
    "HardL1ACEandCELoss": [
        ("ace_weight", 0.5),
        ("ce_weight", 0.5),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("ce_params", None),
    ],
    "HardL1ACEandDiceLoss": [
        ("ace_weight", 0.5),
        ("dice_weight", 0.5),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("dice_params", None),
    ],
    "HardL1ACEandDiceCELoss": [
        ("ace_weight", 0.33),
        ("ce_weight", 0.33),
        ("dice_weight", 0.33),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("dice_params", None),
        ("ce_params", None),
    ],
    "SoftL1ACEandCELoss": [
        ("ace_weight", 0.5),
        ("ce_weight", 0.5),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("ce_params", None),
    ],
    "SoftL1ACEandDiceLoss": [
        ("ace_weight", 0.5),
        ("dice_weight", 0.5),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("dice_params", None),
    ],
    "SoftL1ACEandDiceCELoss": [
        ("ace_weight", 0.33),
        ("dice_weight", 0.33),
        ("ce_weight", 0.33),
        ("to_onehot_y", False),
        ("ace_params", None),
        ("dice_params", None),
        ("ce_params", None),
    ],
    "CrossEntropyLoss": [("to_onehot_y", False), ("ce_params", None)],
}


def _default(p: inspect.Parameter):
    d = p.default
    return None if d is inspect.Parameter.empty else getattr(d, "value", d)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_positional_order_and_defaults_are_the_papers(name):
    params = list(inspect.signature(getattr(L, name)).parameters.values())
    want = PAPER[name]
    assert [p.name for p in params[: len(want)]] == [n for n, _ in want]
    assert [_default(p) for p in params[: len(want)]] == [d for _, d in want]
    # calibseg's own options come after the paper's, keyword or positional
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional[: len(want)]] == [n for n, _ in want]


# B=1, two classes, four voxels, two bins [0, .5], (.5, 1]; class 1 has no foreground.
P = torch.tensor([[[0.2, 0.3, 0.8, 0.9], [0.8, 0.7, 0.2, 0.1]]])
T = torch.tensor([[[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
# hard: class 0 gaps |.25 - .5| and |.85 - 1| -> ACE .2; class 1 gaps .15 and .75 -> .45
HARD = (0.2, 0.45)
# soft (centres .25, .75): 0.3 puts .9 of its weight in bin 0 and .1 in bin 1
_S0 = (abs(0.2 + 0.9 * 0.3 - 0.9) / 1.9 + abs(0.1 * 0.3 + 0.8 + 0.9 - 0.1 - 2.0) / 2.1) / 2
_S1 = (abs(0.2 + 0.1 * 0.7 + 0.1 - 0.0) / 2.1 + abs(0.8 + 0.9 * 0.7) / 1.9) / 2
SOFT = (_S0, _S1)


@pytest.mark.parametrize("cls,ref", [(L.HardL1ACELoss, HARD), (L.SoftL1ACELoss, SOFT)])
def test_ace_defaults_and_empty_classes(cls, ref):
    c0, c1 = ref
    # the paper's default ignores the empty class; calibseg averages over the kept pairs
    assert cls(num_bins=2)(P, T).item() == pytest.approx(c0, rel=1e-5)
    # the paper's "mean" divides by all pairs: reproduced by "sum" over the pair count
    assert cls(num_bins=2, reduction="sum")(P, T).item() / 2 == pytest.approx(c0 / 2, rel=1e-5)
    none = cls(num_bins=2, reduction="none")(P, T)
    assert none.shape == (1, 2, 1)
    torch.testing.assert_close(none.flatten(), torch.tensor([c0, 0.0]), rtol=1e-5, atol=1e-7)
    # flag off: the plain mean of both classes, as the paper's code with the same flag
    off = cls(num_bins=2, ignore_empty_classes=False)(P, T)
    assert off.item() == pytest.approx((c0 + c1) / 2, rel=1e-5)
    # class weights multiply per class (scalar: every class), as in the paper's code
    w = cls(num_bins=2, weight=[2.0, 3.0], ignore_empty_classes=False)(P, T)
    assert w.item() == pytest.approx((2 * c0 + 3 * c1) / 2, rel=1e-5)


def test_soft_positional_empty_weight_and_binned_calibration():
    # SoftL1ACELoss(num_bins, include_background, to_onehot_y, sigmoid, softmax, other_act,
    # reduction, weight, empty_weight, right, ignore_empty_classes)
    loss = L.SoftL1ACELoss(2, True, False, False, False, None, "none", None, 1.95, False, False)
    # bin weights: class 0 (1.9, 2.1), class 1 (2.1, 1.9): only the 2.1 bins reach 1.95
    c0 = abs(0.1 * 0.3 + 0.8 + 0.9 - 2.1) / 2.1
    c1 = abs(0.2 + 0.1 * 0.7 + 0.1) / 2.1
    torch.testing.assert_close(loss(P, T).flatten(), torch.tensor([c0, c1]), rtol=1e-5, atol=0)
    mean_p, mean_gt, counts = L.soft_binned_calibration(P, T, 2, 1.95)
    torch.testing.assert_close(counts[0, 0], torch.tensor([1.9, 2.1]))
    assert math.isnan(mean_p[0, 0, 0]) and math.isnan(mean_gt[0, 0, 0])
    assert mean_p[0, 0, 1].item() == pytest.approx((0.03 + 0.8 + 0.9) / 2.1, rel=1e-6)
    mean_p, mean_gt, counts = L.hard_binned_calibration(P, T, 2)
    torch.testing.assert_close(counts, torch.full((1, 2, 2), 2.0))
    torch.testing.assert_close(mean_p[0, 0], torch.tensor([0.25, 0.85]))
    torch.testing.assert_close(mean_gt[0, 0], torch.tensor([0.5, 1.0]))


def _logits_and_labels():
    # softmax of log-probabilities gives the probabilities back: class 0 = P[0, 0]
    probs = torch.stack([P[0, 0], 1 - P[0, 0]])[None]  # [1, 2, 4]
    labels = torch.tensor([[[1, 0, 0, 0]]])  # class 0 where T[0, 0] == 1
    return probs.log(), labels


def test_compound_losses_with_the_papers_bundle_arguments():
    # the paper's hardl1ace_dice_ce loss config, with 2 bins so the ACE is hand-computable
    logits, labels = _logits_and_labels()
    onehot = F.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    loss = L.HardL1ACEandDiceCELoss(
        ace_weight=0.33,
        dice_weight=0.33,
        ce_weight=0.33,
        to_onehot_y=True,
        ace_params={
            "num_bins": 2,
            "include_background": True,
            "softmax": True,
            "reduction": "mean",
            "ignore_empty_classes": True,
        },
        dice_params={
            "include_background": True,
            "softmax": True,
            "reduction": "mean",
            "squared_pred": True,
            "smooth_nr": 0,
            "smooth_dr": 1.0e-05,
        },
        ce_params={"reduction": "mean"},
    )
    # ACE by hand: class 0 = 0.2 (above); class 1 p (.8, .7, .2, .1), t (1, 0, 0, 0): gaps
    # |.15 - 0| and |.75 - .5| -> 0.2
    ace = 0.2
    dice = DiceLoss(
        include_background=True, softmax=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5
    )(logits, onehot)
    ce = torch.nn.CrossEntropyLoss()(logits, onehot)
    want = 0.33 * ace + 0.33 * dice.item() + 0.33 * ce.item()
    assert loss(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_compound_positional_weights_follow_the_paper():
    logits, labels = _logits_and_labels()
    onehot = F.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    ace_params = {"num_bins": 2, "softmax": True}
    ce = torch.nn.CrossEntropyLoss()(logits, onehot).item()
    dice = DiceLoss(softmax=True)(logits, onehot).item()
    hard = L.HardL1ACEandDiceCELoss(0.1, 0.2, 0.3, True, ace_params)(logits, labels)
    assert hard.item() == pytest.approx(0.1 * 0.2 + 0.2 * ce + 0.3 * dice, rel=1e-5)
    soft_params = {"num_bins": 2, "softmax": True}
    soft_ace = L.SoftL1ACELoss(num_bins=2)(torch.softmax(logits, 1), onehot).item()
    soft = L.SoftL1ACEandDiceCELoss(0.1, 0.2, 0.3, True, soft_params)(logits, labels)
    assert soft.item() == pytest.approx(0.1 * soft_ace + 0.2 * dice + 0.3 * ce, rel=1e-5)
    two = L.HardL1ACEandCELoss(0.25, 0.75, True, ace_params)(logits, labels)
    assert two.item() == pytest.approx(0.25 * 0.2 + 0.75 * ce, rel=1e-5)
    default = L.SoftL1ACEandDiceLoss(to_onehot_y=True, ace_params=soft_params)(logits, labels)
    assert default.item() == pytest.approx(0.5 * soft_ace + 0.5 * dice, rel=1e-5)


def test_cross_entropy_with_the_papers_arguments():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, generator=g)
    labels = torch.randint(0, 3, (2, 1, 5, 4), generator=g)
    onehot = F.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    w = torch.tensor([0.5, 1.0, 4.0])
    for params in ({"reduction": "mean"}, {"weight": w}, {"label_smoothing": 0.1, "weight": w}):
        want = torch.nn.CrossEntropyLoss(**params)(logits, onehot)  # the paper: one-hot first
        got = L.CrossEntropyLoss(to_onehot_y=True, ce_params=params)(logits, labels)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        assert L.CrossEntropyLoss(True, params)(logits, labels).item() == pytest.approx(
            want.item(), rel=1e-6
        )
        # compound CE parts receive the same one-hot labels
        zero_ace = L.HardL1ACEandCELoss(0.0, 1.0, True, {"softmax": True}, params)
        assert zero_ace(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="size_average"):
        L.CrossEntropyLoss(ce_params={"size_average": True})
    with pytest.raises(ValueError, match="both"):
        L.CrossEntropyLoss(ce_params={"weight": w}, weight=w)
