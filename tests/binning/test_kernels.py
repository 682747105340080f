"""The hard-binning kernels (few bins: guess with exact fix-up near edges, or counting edges;
many bins: guess + gather) agree with each other and with the torch path, including values
on and next to edges and non-binary targets confined to a single tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibseg import binning as B

kern = pytest.importorskip("calibseg._kernels")


def _stats(kernel, p, y, num_bins, right, *extra):
    """Run a hard kernel on ``[B, C, N]`` tensors (blocks of 1000 voxels); (cnt, sp, sy, bad)."""
    b, c = p.shape[:2]
    cnt = torch.zeros(b, c, num_bins, dtype=torch.int64)
    sp = torch.zeros(b, c, num_bins, dtype=torch.float64)
    sy = torch.zeros(b, c, num_bins, dtype=torch.float64)
    lo, hi = kern.hard_edges(num_bins, B.bin_edges(num_bins)[1:].numpy(), right)
    (ps, dims), (ys, _) = B._kernel_array(kern, p), B._kernel_array(kern, y)
    outs = (cnt.numpy(), sp.numpy(), sy.numpy())
    if kernel is kern.hard_hist:
        bad = kernel(dims, ps, ys, lo, hi, *outs, 1000)
    else:  # a kernel itself, over all units of 1000 voxels (span 1000 for the narrow one)
        parts = kern._partials(dims, num_bins, 1000, np.int64)
        more = (1000,) if kernel is kern.hard_hist_wide else (1000, 1000, *extra)
        kern.run(kernel, dims, 1000, ps, ys, lo, hi, *parts, *more)
        bad = kern._reduce(parts, dims, *outs)
    return cnt.view(b * c, -1), sp.view(b * c, -1), sy.view(b * c, -1), bad


@pytest.mark.parametrize("num_bins", [1, 3, 20, kern.NARROW_BINS])
@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("ydtype", [torch.float32, torch.uint8])
def test_narrow_kernel_matches_wide_and_torch(num_bins, right, ydtype) -> None:
    g = torch.Generator().manual_seed(num_bins)
    edges = B.bin_edges(num_bins)
    n = 2 * kern.TILE + 77  # two full tiles and a partial one per block
    p = torch.rand(2, 3, n, generator=g)
    p[..., : num_bins + 1] = edges  # exactly on every edge (the last one is above 1)
    p[..., num_bins + 1 : num_bins + 3] = torch.tensor([0.0, 1.0])
    # one ulp either side of every edge, in the second tile
    s = kern.TILE + 20
    p[..., s : s + num_bins + 1] = torch.nextafter(edges, torch.tensor(0.0))
    p[..., s + 100 : s + 101 + num_bins] = torch.nextafter(edges, torch.tensor(2.0))
    p = p.clamp(max=1.0)
    y = (torch.rand(2, 3, n, generator=g) < 0.4).to(ydtype)
    y[1, 2, kern.TILE + 5] = 3 if ydtype == torch.uint8 else 0.25  # one non-binary tile
    wide = _stats(kern.hard_hist_wide, p, y, num_bins, right)
    counted = _stats(kern.hard_hist_narrow, p, y, num_bins, right, np.float32(0))
    narrow = _stats(kern.hard_hist, p, y, num_bins, right)
    for a, b in zip(counted, narrow, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    n_bad_y = 1 if ydtype == torch.uint8 else 0  # 3 is outside [0, 1]; 0.25 is inside
    assert [int(v) for v in narrow[3]] == [int(v) for v in wide[3]] == [0, n_bad_y]
    assert torch.equal(narrow[0], wide[0]) and torch.equal(narrow[2], wide[2])
    torch.testing.assert_close(narrow[1], wide[1], rtol=1e-12, atol=1e-12)
    if ydtype == torch.uint8:
        # the public torch path refuses the 3; build its reference from two valid targets
        # (the element at 0 and at 1): sum_gt = at0 + 3 · (at1 − at0)
        y0, y1 = y.clone(), y.clone()
        y0[1, 2, kern.TILE + 5], y1[1, 2, kern.TILE + 5] = 0, 1
        ref = B._compute_bin_stats_torch(p, y0, num_bins, right=right)
        ref1 = B._compute_bin_stats_torch(p, y1, num_bins, right=right)
        sum_gt = ref.sum_gt + 3 * (ref1.sum_gt - ref.sum_gt)
    else:
        ref = B._compute_bin_stats_torch(p, y, num_bins, right=right)
        sum_gt = ref.sum_gt
    assert torch.equal(narrow[0].view(ref.shape), ref.weight)
    torch.testing.assert_close(narrow[1].view(ref.shape), ref.sum_p, rtol=1e-12, atol=1e-9)
    assert torch.equal(narrow[2].view(ref.shape), sum_gt)


def test_narrow_kernel_counts_bad_values() -> None:
    p = torch.rand(1, 2, 3 * kern.TILE)
    y = torch.ones(1, 2, 3 * kern.TILE)
    p[0, 0, 10], p[0, 1, 700], p[0, 1, 1200] = float("nan"), -0.5, 1.5
    y[0, 1, 3], y[0, 0, 900] = 2.0, float("nan")
    for tau in (np.float32(0), np.float32(kern.TAU)):
        bad = _stats(kern.hard_hist_narrow, p, y, 20, False, tau)[3]
        assert [int(v) for v in bad] == [3, 2]


def test_dispatch_by_number_of_bins() -> None:
    p = torch.rand(1, 1, 3000)
    y = (torch.rand(1, 1, 3000) < 0.5).float()
    for k in (kern.NARROW_BINS, kern.NARROW_BINS + 1):
        a = _stats(kern.hard_hist, p, y, k, False)
        b = B._compute_bin_stats_torch(p, y, k)
        assert torch.equal(a[0].view(b.shape), b.weight)


_THREADS = """
import threading, time
import torch
torch.set_num_threads(1)
from calibseg import _kernels as kern

def used(u0, u1, dims, out):
    time.sleep(0.02)  # long enough for every pool thread to take a chunk
    out.append(threading.get_ident())

def threads(n):
    out = []
    kern.run(used, (1, 2, n), 1024, out)
    return len(set(out)), out[0] == threading.get_ident()

big = 8 * kern.SMALL
one = threads(big)
torch.set_num_threads(2)
print(*one, *threads(big), *threads(10), torch.get_num_threads())
"""


def test_thread_counts_follow_torch_in_a_fresh_process() -> None:
    """Kernels run in the calling thread for one torch thread and for small inputs, on torch's
    thread count of pool threads otherwise, and leave torch's thread count alone."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _THREADS], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "True", "2", "False", "1", "True", "2"]


@pytest.mark.parametrize("soft", [False, True])
def test_subnormal_and_signed_zero_values(soft: bool) -> None:
    """Probabilities below the smallest normal float32 (a network's softmax has them) are binned
    like torch does and summed exactly, not flushed to zero; -0.0 is a valid 0 in both inputs;
    a target a hair above 1 and a NaN target are refused."""
    tiny = torch.finfo(torch.float32).tiny
    n = 3 * kern.TILE
    p = torch.full((1, 2, n), 0.5)
    p[0, 0] = torch.linspace(1e-45, tiny, n)  # every value subnormal (or the smallest normal)
    p[0, 1, :5] = torch.tensor([-0.0, 0.0, 1e-45, 1.0, tiny * 0.5])
    y = torch.zeros(1, 2, n)
    y[0, 0, ::3] = 1.0
    y[0, 1, 7] = -0.0
    ours = B.compute_bin_stats(p, y, 20, soft=soft)
    ref = B._compute_bin_stats_torch(p.double(), y.double(), 20, soft=soft)
    if soft:  # weights are float64 sums of shares
        torch.testing.assert_close(ours.weight, ref.weight.double(), rtol=1e-12, atol=1e-9)
    else:
        assert torch.equal(ours.weight, ref.weight)
    assert ours.sum_p[0, 0, 0] > 0  # a sum of subnormal values, not flushed
    torch.testing.assert_close(ours.sum_p, ref.sum_p, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.sum_gt, ref.sum_gt, rtol=1e-12, atol=0)
    for bad in (torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)), torch.tensor(float("nan"))):
        yb = y.clone()
        yb[0, 1, kern.TILE + 3] = bad
        with pytest.raises(ValueError):
            B.compute_bin_stats(p, yb, 20, soft=soft)


def test_half_patterns_widen_like_torch() -> None:
    """Every float16 and bfloat16 bit pattern (zeros, subnormals, normals, infinities, NaN)
    widens to the float32 torch gives, bit for bit (NaN: any NaN)."""
    from numba import njit

    @njit
    def widen_all(x, bf):
        out = np.empty(x.shape[0], np.float32)
        for i in range(x.shape[0]):
            out[i] = kern.bf16_to_f32(x[i]) if bf else kern.f16_to_f32(x[i])
        return out

    bits = np.arange(1 << 16, dtype=np.uint16)
    for bf, dtype in ((False, torch.float16), (True, torch.bfloat16)):
        ours = torch.from_numpy(widen_all(bits, bf))
        ref = torch.from_numpy(bits.view(np.int16)).view(dtype).float()
        same = (ours.view(torch.int32) == ref.view(torch.int32)) | (ours.isnan() & ref.isnan())
        assert bool(same.all()), (dtype, int((~same).sum()))


def test_widened8_reads_eight_values_and_refuses_strided_arrays() -> None:
    from numba import njit
    from numba.core.errors import TypingError

    @njit
    def read(a, i):
        return kern.widened8(a, i)

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a = rng.random(21).astype(dtype)
        a[5] = np.finfo(dtype).tiny / 4  # a subnormal survives the widening exactly
        for i in (0, 3, 13):  # unaligned starts too
            assert read(a, i) == tuple(float(v) for v in a[i : i + 8].astype(np.float64))

    @njit
    def read_strided(a):
        return kern.widened8(a[::2], 0)

    with pytest.raises(TypingError):
        read_strided(np.zeros(32, np.float32))
