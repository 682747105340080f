"""Compound losses (ACE + Dice / CE) and the MONAI-style cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from calibseg.losses import (
    CrossEntropyLoss,
    HardL1ACEandCELoss,
    HardL1ACEandDiceCELoss,
    HardL1ACEandDiceLoss,
    HardL1ACELoss,
    SoftL1ACEandCELoss,
    SoftL1ACEandDiceCELoss,
    SoftL1ACEandDiceLoss,
    SoftL1ACELoss,
)


def case(shape=(2, 3, 6, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen) * 2
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    onehot = F.one_hot(labels[:, 0], shape[1]).movedim(-1, 1).float()
    return logits, labels, onehot


COMPOUNDS = [
    (HardL1ACEandCELoss, HardL1ACELoss, ("ce",)),
    (HardL1ACEandDiceLoss, HardL1ACELoss, ("dice",)),
    (HardL1ACEandDiceCELoss, HardL1ACELoss, ("dice", "ce")),
    (SoftL1ACEandCELoss, SoftL1ACELoss, ("ce",)),
    (SoftL1ACEandDiceLoss, SoftL1ACELoss, ("dice",)),
    (SoftL1ACEandDiceCELoss, SoftL1ACELoss, ("dice", "ce")),
]


def parts_reference(ace_cls, parts, weights, logits, labels, ace_params):
    onehot = F.one_hot(labels[:, 0], logits.shape[1]).movedim(-1, 1).float()
    total = weights["ace"] * ace_cls(softmax=True, **ace_params)(logits, onehot)
    if "dice" in parts:
        total = total + weights["dice"] * DiceLoss(softmax=True)(logits, onehot)
    if "ce" in parts:
        total = total + weights["ce"] * F.cross_entropy(logits, labels[:, 0])
    return total


@pytest.mark.parametrize("cls,ace_cls,parts", COMPOUNDS)
def test_compound_is_weighted_sum_of_parts(cls, ace_cls, parts):
    logits, labels, onehot = case()
    weights = {"ace": 0.5, "dice": 0.3, "ce": 2.0}
    kwargs = {"ace_weight": 0.5, "ace_params": {"num_bins": 7, "include_background": False}}
    kwargs.update({f"{p}_weight": weights[p] for p in parts})
    x = logits.clone().requires_grad_()
    got = cls(to_onehot_y=True, **kwargs)(x, labels)
    (g_got,) = torch.autograd.grad(got, x)
    y = logits.clone().requires_grad_()
    want = parts_reference(ace_cls, parts, weights, y, labels, kwargs["ace_params"])
    (g_want,) = torch.autograd.grad(want, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(g_got, g_want)
    # the same with one-hot targets (CE converts them to indices)
    same = cls(**kwargs)(logits, onehot)
    assert same.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("cls,ace_cls,parts", COMPOUNDS)
def test_default_weights_are_the_papers(cls, ace_cls, parts):
    # the paper's defaults: 0.5 each for two parts, 0.33 each for three
    logits, labels, _ = case(seed=1)
    w = 0.5 if len(parts) == 1 else 0.33
    got = cls(to_onehot_y=True)(logits, labels)
    want = parts_reference(ace_cls, parts, {"ace": w, "dice": w, "ce": w}, logits, labels, {})
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    ones = {f"{p}_weight": 1.0 for p in ("ace", *parts)}
    added = cls(to_onehot_y=True, **ones)(logits, labels)
    zero_ace = cls(to_onehot_y=True, **(ones | {"ace_weight": 0.0}))(logits, labels)
    ace = ace_cls(softmax=True, to_onehot_y=True)(logits, labels)
    assert added.item() - zero_ace.item() == pytest.approx(ace.item(), rel=1e-5)


def test_part_params_choose_their_own_activation_and_options():
    logits, labels, onehot = case()
    loss = HardL1ACEandDiceCELoss(
        1.0,
        1.0,
        1.0,
        ace_params={"sigmoid": True, "num_bins": 5},
        dice_params={"include_background": False},
        ce_params={"weight": [1.0, 2.0, 3.0], "label_smoothing": 0.1},
    )
    # class-weighted CE of one-hot targets: torch's probability form (mean over voxels)
    want = (
        HardL1ACELoss(sigmoid=True, num_bins=5)(logits, onehot)
        + DiceLoss(softmax=True, include_background=False)(logits, onehot)
        + F.cross_entropy(logits, onehot, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1)
    )
    assert loss(logits, onehot).item() == pytest.approx(want.item(), rel=1e-6)


def test_compound_half_precision_and_bad_arguments():
    logits, labels, _ = case()
    loss = SoftL1ACEandDiceCELoss(to_onehot_y=True)
    half = loss(logits.half(), labels)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss(logits.half().float(), labels).item(), rel=1e-5)
    for kw in ({"ace_weight": -1.0}, {"ce_weight": float("nan")}, {"dice_weight": -0.5}):
        with pytest.raises(ValueError, match="weight"):
            SoftL1ACEandDiceCELoss(**kw)
    with pytest.raises(ValueError, match="to_onehot_y"):
        HardL1ACEandCELoss(to_onehot_y=True, ace_params={"to_onehot_y": False})
    with pytest.raises(ValueError, match="to_onehot_y"):
        HardL1ACEandDiceLoss()(logits, labels)
    with pytest.raises(ValueError, match="3 dims"):
        HardL1ACEandDiceLoss()(logits[:, :, 0, 0], labels[:, :, 0, 0])


def test_cross_entropy_follows_torch_for_indices_and_onehot():
    logits, labels, onehot = case()
    for kw in ({}, {"weight": [0.2, 1.0, 3.0]}, {"label_smoothing": 0.2}, {"reduction": "sum"}):
        ce = CrossEntropyLoss(**kw)
        a, b = ce(logits, labels), ce(logits, onehot)
        c = ce(logits, labels.float())
        w = torch.tensor(kw["weight"]) if "weight" in kw else None
        opts = {
            "weight": w,
            "label_smoothing": kw.get("label_smoothing", 0.0),
            "reduction": kw.get("reduction", "mean"),
        }
        ref_index = F.cross_entropy(logits, labels[:, 0], **opts)
        ref_prob = F.cross_entropy(logits, onehot, **opts)
        assert a.item() == pytest.approx(ref_index.item(), rel=1e-6)
        assert c.item() == pytest.approx(ref_index.item(), rel=1e-6)
        assert b.item() == pytest.approx(ref_prob.item(), rel=1e-6)
        if w is None:  # without class weights both forms are one number
            assert ref_prob.item() == pytest.approx(ref_index.item(), rel=1e-6)
    # weighted mean: indices divide by the summed weights, one-hot by the voxel count
    w = torch.tensor([0.2, 1.0, 3.0])
    nll = -logits.log_softmax(1).gather(1, labels)[:, 0]
    wy = w[labels[:, 0]]
    idx = CrossEntropyLoss(weight=w)(logits, labels).item()
    hot = CrossEntropyLoss(weight=w)(logits, onehot).item()
    assert idx == pytest.approx(((wy * nll).sum() / wy.sum()).item(), rel=1e-6)
    assert hot == pytest.approx(((wy * nll).sum() / nll.numel()).item(), rel=1e-6)
    none = CrossEntropyLoss(reduction="none")(logits, onehot)
    assert none.shape == (2, 1, 6, 5)


def test_cross_entropy_soft_targets_and_binary():
    logits, _, _ = case()
    gen = torch.Generator().manual_seed(5)
    soft = torch.rand(logits.shape, generator=gen).softmax(1)
    want = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert CrossEntropyLoss()(logits, soft).item() == pytest.approx(want.item(), rel=1e-6)
    # rater mean of one-hot labels, e.g. 2 of 3 raters say class 1
    one = logits[:, :1]
    t = (torch.rand(one.shape, generator=gen) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(one, t)
    assert CrossEntropyLoss()(one, t).item() == pytest.approx(bce.item(), rel=1e-6)
    assert CrossEntropyLoss()(logits.bfloat16(), soft).dtype == torch.float32


def test_cross_entropy_errors():
    logits, labels, onehot = case()
    ce = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"\(2, 3, 6, 5\).*\(2, 2, 6, 5\)"):
        ce(logits, onehot[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ce(logits, labels + 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ce(logits, onehot * 3 - 1)
    bad = logits.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ce(bad, labels)
    with pytest.raises(ValueError, match="weight has 2"):
        CrossEntropyLoss(weight=[1.0, 2.0])(logits, labels)
    with pytest.raises(ValueError, match=">= 0"):
        CrossEntropyLoss(weight=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=2.0)


@pytest.mark.parametrize("soft_labels", [False, True])
def test_zero_ace_weight_equals_monai_baselines(soft_labels):
    # the bundles' baselines: monai DiceCELoss / DiceLoss (softmax) and our CE, on the same targets
    from monai.losses import DiceCELoss

    logits, _, onehot = case(seed=4)
    target = onehot
    if soft_labels:  # e.g. the mean of three raters' one-hot labels
        raters = [case(seed=s)[2] for s in (4, 5, 6)]
        target = torch.stack(raters).mean(0)
    baseline = DiceCELoss(softmax=True)(logits, target)
    for cls in (HardL1ACEandDiceCELoss, SoftL1ACEandDiceCELoss):
        got = cls(ace_weight=0.0, dice_weight=1.0, ce_weight=1.0)(logits, target)
        assert got.item() == pytest.approx(baseline.item(), rel=1e-6)
    dice = DiceLoss(softmax=True)(logits, target)
    got = HardL1ACEandDiceLoss(ace_weight=0.0, dice_weight=1.0)(logits, target)
    assert got.item() == pytest.approx(dice.item(), rel=1e-6)
    ce = CrossEntropyLoss()(logits, target)
    got = SoftL1ACEandCELoss(ace_weight=0.0, ce_weight=1.0)(logits, target)
    assert got.item() == pytest.approx(ce.item(), rel=1e-6)
