"""Differentiable binned sums: values and gradients against the plain-autograd reference."""

import subprocess
import sys

import pytest
import torch

from calibseg import binning as B
from calibseg.binning import binned_means, binned_sums


def _grads(fn, p, y, ws, soft, right=False, k=6):
    out = fn(p, y, k, right, soft)
    loss = sum((o * w).sum() for o, w in zip(out, ws, strict=True) if o.requires_grad)
    inputs = [t for t in (p, y) if t.requires_grad]
    return out, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("y_grad", [False, True])
def test_matches_reference(soft, right, dtype, y_grad) -> None:
    p0 = torch.rand(2, 3, 5, 7, dtype=dtype)
    p0.view(-1)[::9] = B.bin_edges(6)[2].to(dtype)  # values on an edge
    y0 = (torch.rand(2, 3, 5, 7) < 0.5).to(dtype)
    ws = [torch.randn(2, 3, 6, dtype=dtype) for _ in range(3)]
    res = []
    for fn in (binned_sums, B._binned_sums_reference):
        p = p0.clone().requires_grad_()
        y = y0.clone().requires_grad_(y_grad)
        res.append(_grads(fn, p, y, ws, soft, right))
    (out, g), (ref_out, ref_g) = res
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 0}
    for a, b in zip(out, ref_out, strict=True):
        assert a.dtype == dtype and a.shape == (2, 3, 6)
        torch.testing.assert_close(a, b, **tol)
        assert a.requires_grad == b.requires_grad
    assert len(g) == (2 if y_grad else 1)
    for a, b in zip(g, ref_g, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("num_bins", [1, 2, 5])
def test_gradcheck_soft(num_bins: int) -> None:
    p = torch.rand(1, 2, 7, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: binned_sums(a, b, num_bins, soft=True), (p, y))


def test_gradcheck_hard_sum_p() -> None:
    # away from the edges hard sums are linear in p: d sum_p[bin(i)] / d p_i = 1
    p = (torch.arange(12, dtype=torch.float64) / 12 + 0.03).view(1, 2, 6).requires_grad_()
    y = torch.rand(1, 2, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: binned_sums(a, y, 4)[1], (p,))


def test_soft_gradient_hand_computed() -> None:
    # K=4, p between the first two centres: w0 = 1 - f, w1 = f, f = p / width - 0.5
    width = (1.0 + torch.finfo(torch.float32).eps) / 4
    p = torch.tensor([[[0.3]]], dtype=torch.float64, requires_grad=True)
    w, sp, sg = binned_sums(p, torch.ones_like(p), 4, soft=True)
    (g_w1,) = torch.autograd.grad(w[0, 0, 1], p, retain_graph=True)
    torch.testing.assert_close(g_w1.item(), 1 / width, rtol=1e-12, atol=0)
    (g_sp0,) = torch.autograd.grad(sp[0, 0, 0], p)
    f = 0.3 / width - 0.5
    torch.testing.assert_close(g_sp0.item(), (1 - f) - 0.3 / width, rtol=1e-12, atol=0)


def test_half_and_bool_inputs() -> None:
    p = torch.rand(1, 2, 30).half().requires_grad_()
    y = torch.rand(1, 2, 30) < 0.5
    for soft in (False, True):
        w, sp, sg = binned_sums(p, y, 5, soft=soft)
        assert sp.dtype == torch.float32
        ref = B._binned_sums_reference(p, y, 5, soft=soft)
        torch.testing.assert_close(sp, ref[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sg, ref[2], atol=1e-5, rtol=1e-5)
        (g,) = torch.autograd.grad(sp.sum() + w.sum() * soft, p)
        (g_ref,) = torch.autograd.grad(ref[1].sum() + ref[0].sum() * soft, p)
        assert g.dtype == torch.float16
        torch.testing.assert_close(g, g_ref, atol=1e-2, rtol=1e-3)


def test_binned_means_grad_and_nan() -> None:
    p = torch.tensor([[[0.1, 0.2, 0.9]]], requires_grad=True)
    y = torch.tensor([[[1.0, 0.0, 1.0]]])
    mean_p, mean_gt, counts = binned_means(p, y, 4)
    assert counts.tolist() == [[[2.0, 0.0, 0.0, 1.0]]]
    assert torch.isnan(mean_p[0, 0, 1:3]).all()
    torch.testing.assert_close(mean_gt[0, 0, [0, 3]], torch.tensor([0.5, 1.0]))
    ace = (mean_p - mean_gt).abs().nan_to_num().sum()
    (g,) = torch.autograd.grad(ace, p)
    # bin 0: mean_p 0.15 < mean_gt 0.5 -> d|.|/dp_i = -1/2; bin 3: 0.9 < 1 -> -1
    torch.testing.assert_close(g, torch.tensor([[[-0.5, -0.5, -1.0]]]))


def test_import_is_lazy() -> None:
    """`import calibseg.binning` does not import numba (kept for the first kernel call)."""
    code = "import sys, calibseg.binning; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
