"""mL1-ACE losses: hand-computed values, reference implementation, gradients, options, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from calibseg.binning import binned_sums
from calibseg.losses import (
    HardL1ACELoss,
    SoftL1ACELoss,
    hard_binned_calibration,
    soft_binned_calibration,
)

EPS32 = float(torch.finfo(torch.float32).eps)


def reference_ace(
    p: torch.Tensor,
    g: torch.Tensor,
    num_bins: int = 20,
    soft: bool = False,
    right: bool = False,
    empty_weight: float | None = None,
    fixed_split: bool = False,
) -> torch.Tensor:
    """Plain per-(b, c) autograd reference: ACE ``[B, C]`` with bucketize + masks / triangles
    (``fixed_split``: soft bin weights detached, gradient only through the bin means)."""
    if empty_weight is None:
        empty_weight = 0.01 if soft else 0.0
    width = (1.0 + EPS32) / num_bins
    upper = torch.linspace(0.0, 1.0 + EPS32, num_bins + 1)[1:].to(p.dtype)
    centres = (torch.arange(num_bins, dtype=p.dtype) + 0.5) * width
    out = torch.zeros(p.shape[:2], dtype=p.dtype)
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            pv, gv = p[b, c].reshape(-1), g[b, c].reshape(-1).to(p.dtype)
            gaps = []
            if not soft:
                idx = torch.bucketize(pv.detach(), upper, right=right).clamp(max=num_bins - 1)
                for k in range(num_bins):
                    m = idx == k
                    if m.any():
                        gaps.append((pv[m].mean() - gv[m].mean()).abs())
            else:
                q = pv.clamp(float(centres[0]), float(centres[-1]))
                tri = torch.relu(1 - (q[:, None] - centres[None]).abs() / width)  # [N, K]
                if fixed_split:
                    tri = tri.detach()
                for k in range(num_bins):
                    wk = tri[:, k].sum()
                    if wk > 0 and wk >= empty_weight:
                        mp = (tri[:, k] * pv).sum() / wk
                        mg = (tri[:, k] * gv).sum() / wk
                        gaps.append((mp - mg).abs())
            out[b, c] = torch.stack(gaps).mean()
    return out


def random_case(shape=(2, 3, 6, 5), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype) * 2
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    onehot = F.one_hot(labels[:, 0], shape[1]).movedim(-1, 1).to(dtype)
    return logits, labels, onehot


LOSSES = [HardL1ACELoss, SoftL1ACELoss]


def test_hand_computed_constant_prediction():
    # constant 0.7 on a half-positive mask: one (hard) or two (soft) bins, all with gap 0.2
    p = torch.full((1, 1, 4, 4), 0.7)
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :] = 1
    assert HardL1ACELoss()(p, t).item() == pytest.approx(0.2, abs=1e-6)
    assert SoftL1ACELoss()(p, t).item() == pytest.approx(0.2, abs=1e-6)


def test_hand_computed_two_bins_hard_differs_from_soft():
    # K=2, centres 0.25 / 0.75. p=0.5 (gt 1), p=0.25 (gt 0).
    # hard: both in bin 0 -> |0.375 - 0.5| = 0.125
    # soft: p=0.25 all to bin 0; p=0.5 half/half -> bin0 w=1.5 means (1/3, 1/3), gap 0;
    #       bin1 w=0.5 means (0.5, 1), gap 0.5 -> ACE 0.25
    p = torch.tensor([0.5, 0.25]).view(1, 1, 2, 1)
    t = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1)
    assert HardL1ACELoss(num_bins=2)(p, t).item() == pytest.approx(0.125, abs=1e-6)
    assert SoftL1ACELoss(num_bins=2)(p, t).item() == pytest.approx(0.25, abs=1e-5)
    mp, mg, n = soft_binned_calibration(p, t, num_bins=2)
    assert n.flatten().tolist() == pytest.approx([1.5, 0.5], abs=1e-6)
    assert mp.flatten().tolist() == pytest.approx([1 / 3, 0.5], abs=1e-6)
    mp, mg, n = hard_binned_calibration(p, t, num_bins=2)
    assert n.flatten().tolist() == [2, 0]
    assert torch.isnan(mp[..., 1]).all() and mg[..., 0].item() == pytest.approx(0.5)


@pytest.mark.parametrize("cls", LOSSES)
def test_perfect_predictor_is_zero(cls):
    _, _, onehot = random_case(dtype=torch.float32)
    assert cls()(onehot.clone(), onehot).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("num_bins", [1, 7, 20])
def test_values_and_gradients_match_reference(soft, num_bins):
    logits, _, onehot = random_case()
    logits.requires_grad_()
    cls = SoftL1ACELoss if soft else HardL1ACELoss
    ours = cls(num_bins=num_bins, softmax=True)(logits, onehot)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = reference_ace(logits.softmax(1), onehot, num_bins, soft=soft).mean()
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-10)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-10, rtol=1e-7)


@pytest.mark.parametrize("num_bins", [1, 7, 20])
def test_fixed_split_matches_reference(num_bins):
    # membership_grad=False: same value; gradient only through the bin means
    logits, _, onehot = random_case()
    logits.requires_grad_()
    exact = SoftL1ACELoss(num_bins=num_bins, softmax=True)(logits, onehot)
    ours = SoftL1ACELoss(num_bins=num_bins, softmax=True, membership_grad=False)(logits, onehot)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = reference_ace(logits.softmax(1), onehot, num_bins, soft=True, fixed_split=True).mean()
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert ours.item() == pytest.approx(exact.item(), abs=1e-12)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-10, rtol=1e-7)


def test_split_gradient_hand_computed():
    # K=20 (centres 0.275, 0.325, 0.375 around): p1=0.30 (gt 1) splits 0.5/0.5 over bins 5/6,
    # p2=0.34 (gt 0) 0.7/0.3 over bins 6/7. Bin 5: gap 0.7; bin 6: W=1.2, mean_p - mean_gt =
    # (0.388 - 0.5)/1.2 = -0.0933; bin 7: gap 0.34. ACE = mean of the three gaps.
    # Fixed split: dACE/dp1 = (1/3)(-0.5/0.5 - 0.5/1.2) = -17/36 (p1 pushed up, towards its label).
    # Exact: + (1/3) * 20 * (-1) * ((p1 - 1) - (-0.0933))/1.2 = +3.3704 from moving p1's weight
    # into bin 6, so the exact gradient pushes p1 *down*, six times harder.
    p = torch.tensor([0.30, 0.34], dtype=torch.float64).view(1, 1, 2).requires_grad_()
    t = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    (g_exact,) = torch.autograd.grad(SoftL1ACELoss()(p, t), p)
    (g_fixed,) = torch.autograd.grad(SoftL1ACELoss(membership_grad=False)(p, t), p)
    assert g_fixed[0, 0, 0].item() == pytest.approx(-17 / 36, rel=1e-5)
    split = 20 * (0.7 - 0.112 / 1.2) / 1.2 / 3
    assert g_exact[0, 0, 0].item() == pytest.approx(-17 / 36 + split, rel=1e-5)


def test_right_edges_follow_reference():
    # values exactly on bin edges (float32 edges) go up with right=True
    k = 4
    edges = torch.linspace(0.0, 1.0 + EPS32, k + 1)[1:-1]
    p = torch.cat([edges, torch.tensor([0.1, 0.9])]).view(1, 1, -1, 1)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]).view(1, 1, -1, 1)
    for right in (False, True):
        ours = HardL1ACELoss(num_bins=k, right=right)(p, t)
        ref = reference_ace(p, t, k, right=right).mean()
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    assert HardL1ACELoss(num_bins=k)(p, t).item() != pytest.approx(
        HardL1ACELoss(num_bins=k, right=True)(p, t).item()
    )


def test_gradcheck_soft():
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(1, 2, 4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    t = (torch.rand(1, 2, 4, 3, generator=gen) > 0.5).double()
    loss = SoftL1ACELoss(num_bins=5, reduction="sum")
    assert torch.autograd.gradcheck(lambda x: loss(x, t), (p,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_hard_away_from_edges():
    # values at least 10% of a bin width from any edge: finite differences stay in their bins
    k = 5
    gen = torch.Generator().manual_seed(2)
    bins = torch.randint(0, k, (1, 2, 4, 3), generator=gen)
    frac = 0.1 + 0.8 * torch.rand(1, 2, 4, 3, generator=gen, dtype=torch.float64)
    p = ((bins + frac) / k).requires_grad_()
    t = (torch.rand(1, 2, 4, 3, generator=gen) > 0.5).double()
    loss = HardL1ACELoss(num_bins=k, reduction="sum")
    assert torch.autograd.gradcheck(lambda x: loss(x, t), (p,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("spatial", [(5, 4), (3, 4, 2)])
def test_reductions_and_shapes(cls, spatial):
    logits, _, onehot = random_case(shape=(2, 3, *spatial), dtype=torch.float32)
    none = cls(softmax=True, reduction="none")(logits, onehot)
    assert none.shape == (2, 3, *([1] * len(spatial)))
    assert torch.broadcast_shapes(none.shape, logits.shape) == logits.shape
    ref = reference_ace(logits.double().softmax(1), onehot.double(), soft=cls is SoftL1ACELoss)
    torch.testing.assert_close(none.flatten(2)[..., 0].double(), ref, atol=1e-6, rtol=1e-5)
    assert cls(softmax=True)(logits, onehot).item() == pytest.approx(none.mean().item(), rel=1e-6)
    s = cls(softmax=True, reduction="sum")(logits, onehot)
    assert s.item() == pytest.approx(none.sum().item(), rel=1e-6)
    with pytest.raises(ValueError):
        cls(reduction="avg")


@pytest.mark.parametrize("cls", LOSSES)
def test_class_weight(cls):
    logits, _, onehot = random_case(dtype=torch.float32)
    w = torch.tensor([0.0, 2.0, 0.5])
    none = cls(softmax=True, reduction="none")(logits, onehot)
    weighted = cls(softmax=True, reduction="none", weight=w)(logits, onehot)
    torch.testing.assert_close(weighted, none * w.view(1, 3, 1, 1))
    mean = cls(softmax=True, weight=w.tolist())(logits, onehot)
    assert mean.item() == pytest.approx((none * w.view(1, 3, 1, 1)).mean().item(), rel=1e-6)
    scalar = cls(softmax=True, reduction="none", weight=3.0)(logits, onehot)
    torch.testing.assert_close(scalar, none * 3)
    # without background the weight has C - 1 entries
    nb = cls(softmax=True, include_background=False, weight=[1.0, 2.0], reduction="none")
    torch.testing.assert_close(
        nb(logits, onehot), none[:, 1:] * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    )
    with pytest.raises(ValueError, match="weight has 3 entries"):
        cls(softmax=True, include_background=False, weight=w)(logits, onehot)
    with pytest.raises(ValueError, match=">= 0"):
        cls(weight=[1.0, -1.0, 1.0])


@pytest.mark.parametrize("cls", LOSSES)
def test_include_background(cls):
    logits, _, onehot = random_case(dtype=torch.float32)
    probs = logits.softmax(1)
    got = cls(softmax=True, include_background=False)(logits, onehot)
    want = cls()(probs[:, 1:], onehot[:, 1:])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert got.item() != pytest.approx(cls(softmax=True)(logits, onehot).item(), rel=1e-3)


@pytest.mark.parametrize("cls", LOSSES)
def test_to_onehot_y_equals_onehot_target(cls):
    logits, labels, onehot = random_case(dtype=torch.float32)
    a = cls(softmax=True, to_onehot_y=True, reduction="none")(logits, labels)
    b = cls(softmax=True, reduction="none")(logits, onehot)
    c = cls(softmax=True, to_onehot_y=True, reduction="none")(logits, labels.float())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, b)


@pytest.mark.parametrize("cls", LOSSES)
def test_ignore_empty_classes_is_a_masked_mean(cls):
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(2, 2, 6, 6, generator=gen)
    t = (torch.rand(2, 2, 6, 6, generator=gen) > 0.6).float()
    # add a class whose target is empty everywhere, with arbitrary predictions
    p3 = torch.cat([p, torch.rand(2, 1, 6, 6, generator=gen)], 1)
    t3 = torch.cat([t, torch.zeros(2, 1, 6, 6)], 1)
    base = cls(ignore_empty_classes=True)(p, t)
    assert cls(ignore_empty_classes=True)(p3, t3).item() == pytest.approx(base.item(), rel=1e-6)
    assert cls()(p3, t3).item() == pytest.approx(base.item(), rel=1e-6)  # the default
    kept = cls(ignore_empty_classes=False)(p3, t3)
    assert kept.item() != pytest.approx(base.item(), rel=1e-3)
    assert cls(ignore_empty_classes=False)(p, t).item() == pytest.approx(base.item(), rel=1e-6)
    # 'none' zeroes ignored pairs; 'mean' averages over the kept ones only
    t3[1, 0] = 0
    none = cls(ignore_empty_classes=True, reduction="none")(p3, t3).flatten()
    full = cls(ignore_empty_classes=False, reduction="none")(p3, t3).flatten()
    keep = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    torch.testing.assert_close(none, torch.where(keep, full, torch.zeros_like(full)))
    mean = cls(ignore_empty_classes=True)(p3, t3)
    assert mean.item() == pytest.approx(full[keep].mean().item(), rel=1e-6)
    # everything empty: 0, still differentiable
    pz = p.clone().requires_grad_()
    z = cls(ignore_empty_classes=True)(pz, torch.zeros_like(p))
    z.backward()
    assert z.item() == 0.0 and pz.grad is not None and pz.grad.abs().sum() == 0


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_computed_in_float32(cls, dtype):
    logits, _, onehot = random_case(dtype=torch.float32)
    x = logits.to(dtype).requires_grad_()
    loss = cls(softmax=True)(x, onehot.to(dtype))
    assert loss.dtype == torch.float32
    ref = cls(softmax=True)(x.detach().float(), onehot)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    loss.backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_sigmoid_and_other_act():
    logits, _, onehot = random_case(dtype=torch.float32)
    a = HardL1ACELoss(sigmoid=True)(logits, onehot)
    b = HardL1ACELoss(other_act=torch.sigmoid)(logits, onehot)
    c = HardL1ACELoss()(torch.sigmoid(logits), onehot)
    assert a.item() == pytest.approx(c.item()) and b.item() == pytest.approx(c.item())
    with pytest.raises(ValueError, match="Incompatible"):
        HardL1ACELoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError):
        HardL1ACELoss(other_act="relu")


@pytest.mark.parametrize("cls", LOSSES)
def test_bad_input(cls):
    logits, labels, onehot = random_case(dtype=torch.float32)
    loss = cls(softmax=True)
    with pytest.raises(ValueError, match=r"\(2, 3, 6, 5\).*\(2, 2, 6, 5\)"):
        loss(logits, onehot[:, :2])
    with pytest.raises(ValueError, match="to_onehot_y"):
        loss(logits, labels.float())
    with pytest.raises(ValueError, match="at least 3 dims"):
        loss(logits[:, :, 0, 0], onehot[:, :, 0, 0])
    bad = logits.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(bad, onehot)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        cls(sigmoid=True)(bad, onehot)
    probs = logits.sigmoid()
    probs[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cls()(probs, onehot)
    with pytest.raises(ValueError, match="softmax=True"):
        cls()(logits, onehot)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cls(softmax=True)(logits, onehot * 2)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        cls(softmax=True, to_onehot_y=True)(logits, labels + 1)
    with pytest.raises(ValueError, match=r"\[B, 1"):
        cls(softmax=True, to_onehot_y=True)(logits, onehot)
    for nb in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_bins"):
            cls(num_bins=nb)
    with pytest.raises(TypeError, match="floating"):
        cls()(labels, labels)


def test_bad_empty_weight_and_functional_errors():
    with pytest.raises(ValueError, match="empty_weight"):
        SoftL1ACELoss(empty_weight=-0.1)
    p = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="num_bins"):
        hard_binned_calibration(p, p, num_bins=0)
    with pytest.raises(ValueError, match="shape"):
        soft_binned_calibration(p, p[:, :1])


@pytest.mark.parametrize("cls", LOSSES)
def test_one_channel_warnings_follow_monai(cls):
    p = torch.rand(2, 1, 4, 4)
    t = (torch.rand(2, 1, 4, 4) > 0.5).float()
    with pytest.warns(UserWarning, match="softmax=True"):
        a = cls(softmax=True)(p, t)
    with pytest.warns(UserWarning, match="to_onehot_y=True"):
        b = cls(to_onehot_y=True)(p, t)
    assert a.item() == pytest.approx(cls()(p, t).item())
    assert b.item() == pytest.approx(a.item())


def test_binned_calibration_functions_shapes_and_values():
    logits, _, onehot = random_case(dtype=torch.float32)
    probs = logits.softmax(1)
    for fn in (hard_binned_calibration, soft_binned_calibration):
        mp, mg, n = fn(probs, onehot, num_bins=8)
        assert mp.shape == mg.shape == n.shape == (2, 3, 8)
        torch.testing.assert_close(
            n.sum(-1).double(), torch.full((2, 3), 30.0, dtype=torch.float64), atol=1e-5, rtol=0
        )
        ok = ~torch.isnan(mp)
        assert ((mp[ok] >= 0) & (mp[ok] <= 1)).all()
    mp, mg, _ = hard_binned_calibration(probs, onehot, num_bins=8)
    gap = torch.nanmean((mp - mg).abs(), -1)
    torch.testing.assert_close(
        gap, HardL1ACELoss(num_bins=8, reduction="none")(probs, onehot).flatten(2)[..., 0]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", LOSSES)
def test_cuda_matches_cpu(cls):
    logits, labels, _ = random_case(dtype=torch.float32)
    cpu = cls(softmax=True, to_onehot_y=True)(logits, labels)
    gpu = cls(softmax=True, to_onehot_y=True).cuda()(logits.cuda(), labels.cuda())
    assert gpu.item() == pytest.approx(cpu.item(), abs=1e-5)


@pytest.mark.parametrize("cls", LOSSES)
def test_torch_path_matches_kernel_path(cls, monkeypatch):
    # CALIBSEG_NO_NUMBA selects binning's vectorised torch path (the one CUDA tensors use)
    logits, labels, _ = random_case(dtype=torch.float32)
    x = logits.clone().requires_grad_()
    a = cls(softmax=True, to_onehot_y=True)(x, labels)
    (ga,) = torch.autograd.grad(a, x)
    monkeypatch.setenv("CALIBSEG_NO_NUMBA", "1")
    y = logits.clone().requires_grad_()
    b = cls(softmax=True, to_onehot_y=True)(y, labels)
    (gb,) = torch.autograd.grad(b, y)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", LOSSES)
def test_integer_and_bool_targets(cls):
    logits, labels, onehot = random_case(dtype=torch.float32)
    want = cls(softmax=True)(logits, onehot).item()
    assert cls(softmax=True)(logits, onehot.bool()).item() == pytest.approx(want, abs=1e-6)
    assert cls(softmax=True)(logits, onehot.to(torch.uint8)).item() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        cls(softmax=True)(logits, onehot.long() * 2)


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan")])
def test_probabilities_outside_0_1_are_refused_by_the_binning_pass(cls, bad) -> None:
    """The range check happens inside the binning pass (no separate pass); a bad probability
    anywhere, in any class, still gives the loss's own message with its hint."""
    _, _, onehot = random_case(dtype=torch.float32)
    p = torch.full(onehot.shape, 0.25)
    p.view(-1)[p.numel() // 2 + 7] = bad
    with pytest.raises(
        ValueError, match=r"input (must lie in \[0, 1\].*softmax=True|contains NaN)"
    ):
        cls()(p.requires_grad_(), onehot)
    w, sp, sy = binned_sums(p.detach(), onehot, 20)  # without check_range: no error
    assert int(w.sum()) == p.numel()
    with pytest.raises(ValueError, match="must lie in"):
        binned_sums(p.detach(), onehot, 20, check_range=True)
