"""Binning kernel: hand-computed cases, MONAI equality, soft binning, additivity, validation."""

import ctypes
import os
import threading

import pytest
import torch
from monai.metrics.calibration import calibration_binning

from calibseg import binning as B
from calibseg.binning import BinStats, bin_centres, bin_edges, compute_bin_stats

BACKENDS = {"numba": compute_bin_stats, "torch": B._compute_bin_stats_torch}


@pytest.fixture(params=sorted(BACKENDS))
def stats_fn(request):
    return BACKENDS[request.param]


def _bins_of(stats: BinStats) -> list[int]:
    """Bin of each value when every value was given as its own image."""
    return stats.weight[:, 0].argmax(-1).tolist()


def _one_per_image(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def test_edges_and_centres() -> None:
    e = bin_edges(4)
    assert e.dtype == torch.float32 and e.shape == (5,)
    assert float(e[0]) == 0.0 and float(e[-1]) == 1.0 + torch.finfo(torch.float32).eps
    torch.testing.assert_close(bin_centres(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))


@pytest.mark.parametrize("right", [False, True])
def test_hand_computed_bins(stats_fn, right: bool) -> None:
    e = bin_edges(4).tolist()  # 0, 0.25000003, 0.50000006, 0.7500001, 1.0000001
    values = [0.0, 0.1, 0.25, e[1], 0.3, e[2], 0.6, e[3], 0.99, 1.0]
    p = _one_per_image(values)
    s = stats_fn(p, torch.zeros_like(p), num_bins=4, right=right)
    # on an inner edge: lower bin with right=False, upper bin with right=True
    expected = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3] if right else [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert _bins_of(s) == expected
    assert s.weight.sum().item() == len(values) and s.weight.dtype == torch.int64


@pytest.mark.parametrize("num_bins", [1, 3, 10, 20, 37])
@pytest.mark.parametrize("right", [False, True])
def test_every_edge(stats_fn, num_bins: int, right: bool) -> None:
    e = bin_edges(num_bins)
    # the last edge, 1 + eps, is outside [0, 1]: skip validation
    s = stats_fn(e.view(-1, 1, 1), torch.zeros(num_bins + 1, 1, 1), num_bins, right, validate=False)
    j = torch.arange(num_bins + 1)
    expected = (j if right else (j - 1).clamp(min=0)).clamp(max=num_bins - 1)
    assert _bins_of(s) == expected.tolist()


def test_mid_bin_sums_and_empty_bins(stats_fn) -> None:
    p = torch.tensor([0.1, 0.2, 0.15, 0.9]).view(1, 1, 4)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 4)
    s = stats_fn(p, y, num_bins=4)
    assert s.weight.tolist() == [[[3, 0, 0, 1]]]
    mean_p, mean_gt, counts = s.means()
    torch.testing.assert_close(mean_p[0, 0, 0].item(), (0.1 + 0.2 + 0.15) / 3, rtol=0, atol=1e-7)
    torch.testing.assert_close(mean_gt[0, 0, 0].item(), 2 / 3, rtol=0, atol=1e-12)
    assert torch.isnan(mean_p[0, 0, 1:3]).all() and torch.isnan(mean_gt[0, 0, 1:3]).all()
    err = s.errors()
    gaps = [abs(0.15 - 2 / 3), abs(0.9 - 1.0)]
    torch.testing.assert_close(err["ece"].item(), (3 * gaps[0] + gaps[1]) / 4, atol=1e-7, rtol=0)
    torch.testing.assert_close(err["ace"].item(), sum(gaps) / 2, atol=1e-7, rtol=0)
    torch.testing.assert_close(err["mce"].item(), max(gaps), atol=1e-7, rtol=0)


def test_num_bins_one(stats_fn) -> None:
    p = torch.tensor([0.0, 0.4, 1.0]).view(1, 1, 3)
    y = torch.tensor([0.0, 1.0, 1.0]).view(1, 1, 3)
    s = stats_fn(p, y, num_bins=1)
    assert s.weight.tolist() == [[[3]]]
    torch.testing.assert_close(s.sum_p, torch.tensor([[[1.4]]], dtype=torch.float64))
    soft = stats_fn(p, y, num_bins=1, soft=True)
    torch.testing.assert_close(soft.weight, torch.tensor([[[3.0]]], dtype=torch.float64))
    torch.testing.assert_close(soft.sum_gt, torch.tensor([[[2.0]]], dtype=torch.float64))


@pytest.mark.parametrize(
    "shape", [(1, 1, 7), (2, 3, 16, 16), (1, 4, 9, 10, 11), (3, 2, 5, 4, 3, 2)]
)
@pytest.mark.parametrize("num_bins", [1, 5, 20])
@pytest.mark.parametrize("right", [False, True])
def test_matches_monai(stats_fn, shape, num_bins: int, right: bool) -> None:
    p = torch.rand(shape)
    p.view(-1)[:: max(1, p.numel() // 5)] = bin_edges(num_bins)[num_bins // 2]  # on an edge
    y = (torch.rand(shape) < p).float()
    mean_p, mean_gt, counts = calibration_binning(p, y, num_bins=num_bins, right=right)
    s = stats_fn(p, y, num_bins=num_bins, right=right)
    assert torch.equal(s.weight, counts.long())
    ours_p, ours_gt, _ = s.means()
    torch.testing.assert_close(ours_p, mean_p.double(), atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(ours_gt, mean_gt.double(), atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("pdtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("ydtype", [torch.bool, torch.uint8, torch.float32, torch.float64])
def test_dtypes_agree_with_torch_path(pdtype, ydtype) -> None:
    p = torch.rand(2, 3, 11, 13).to(pdtype)
    y = torch.rand(2, 3, 11, 13) < 0.4
    y = y if ydtype == torch.bool else y.to(ydtype)
    for soft in (False, True):
        a = compute_bin_stats(p, y, 10, soft=soft, chunk_size=97)
        b = B._compute_bin_stats_torch(p, y, 10, soft=soft)
        assert a.weight.dtype == b.weight.dtype
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-9)
        torch.testing.assert_close(a.sum_p, b.sum_p, rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(a.sum_gt, b.sum_gt, rtol=1e-12, atol=1e-9)


def test_strided_inputs() -> None:
    base = torch.rand(2, 6, 5, 4, 3)
    p, y = base.permute(0, 2, 4, 3, 1)[:, :3], (base > 0.5).permute(0, 2, 4, 3, 1)[:, :3]
    assert not p.is_contiguous()
    a = compute_bin_stats(p, y, 7, chunk_size=5)
    b = B._compute_bin_stats_torch(p.contiguous(), y.contiguous(), 7)
    assert torch.equal(a.weight, b.weight)
    torch.testing.assert_close(a.sum_p, b.sum_p)
    torch.testing.assert_close(a.sum_gt, b.sum_gt)


def test_exact_counts_beyond_float32() -> None:
    """20,000,001 voxels of one value in one bin: MONAI's float32 counts/means drift, ours don't."""
    n = 20_000_001
    p = torch.full((1, 1, n), 0.33)
    y = torch.zeros((1, 1, n), dtype=torch.bool)
    y[..., ::2] = True  # 10,000,001 positives
    s = compute_bin_stats(p, y, num_bins=20)
    assert s.weight[0, 0, 6].item() == n and s.weight.sum().item() == n
    assert s.sum_gt[0, 0, 6].item() == 10_000_001
    mean_p, mean_gt, _ = s.means()
    assert mean_p[0, 0, 6].item() == float(torch.tensor(0.33))  # float32(0.33), exactly
    assert mean_gt[0, 0, 6].item() == 10_000_001 / n
    m_p, m_gt, m_counts = calibration_binning(p, y.float(), num_bins=20)
    assert m_counts[0, 0, 6].item() == 2**24  # float32 counting stops at 16,777,216
    assert abs(m_p[0, 0, 6].item() - 0.33) > 1e-2 and abs(m_gt[0, 0, 6].item() - 0.5) > 1e-2


@pytest.mark.parametrize("soft", [False, True])
def test_additivity_chunks_images(stats_fn, soft: bool) -> None:
    p = torch.rand(3, 2, 40)
    y = (torch.rand(3, 2, 40) < p).float()
    whole = stats_fn(p, y, 8, soft=soft)
    parts = [
        stats_fn(p[..., i : i + 13], y[..., i : i + 13], 8, soft=soft) for i in (0, 13, 26, 39)
    ]
    summed = BinStats.sum(parts)
    torch.testing.assert_close(summed.weight, whole.weight)
    torch.testing.assert_close(summed.sum_p, whole.sum_p)
    torch.testing.assert_close(summed.sum_gt, whole.sum_gt)
    # images: cat of single images == batch; total == sum over images
    cat = BinStats.cat([stats_fn(p[i : i + 1], y[i : i + 1], 8, soft=soft) for i in range(3)])
    torch.testing.assert_close(cat.weight, whole.weight)
    tot = whole.total()
    assert tot.shape == (1, 2, 8)
    torch.testing.assert_close(tot.sum_p[0], whole.sum_p.sum(0))
    # chunk_size does not change the result
    chunked = stats_fn(p.half(), y, 8, soft=soft, chunk_size=7)
    ref = stats_fn(p.half(), y, 8, soft=soft)
    torch.testing.assert_close(chunked.weight, ref.weight)
    torch.testing.assert_close(chunked.sum_p, ref.sum_p)


def test_binstats_helpers() -> None:
    s = compute_bin_stats(torch.rand(2, 3, 50), torch.rand(2, 3, 50).round(), 5)
    d = BinStats.from_dict(s.to_dict())
    assert torch.equal(d.weight, s.weight) and torch.equal(d.sum_p, s.sum_p)
    fg = s.select_classes(slice(1, None))
    assert fg.shape == (2, 2, 5) and torch.equal(fg.weight, s.weight[:, 1:])
    z = BinStats.zeros(2, 3, 5)
    assert torch.equal((s + z).weight, s.weight) and z.weight.dtype == torch.int64
    with pytest.raises(ValueError, match="cannot add"):
        s + BinStats.zeros(1, 3, 5)
    with pytest.raises(ValueError, match="empty"):
        BinStats.sum([])


def test_soft_hand_computed(stats_fn) -> None:
    # K=4: centres 0.125, 0.375, 0.625, 0.875 (bin width (1 + eps) / 4)
    values = [0.25, 0.3125, 0.125, 0.05, 0.95, 0.625]
    expected = [
        [0.5, 0.5, 0, 0],  # half way between the first two centres
        [0.25, 0.75, 0, 0],  # three quarters of the way to the second centre
        [1, 0, 0, 0],  # on a centre
        [1, 0, 0, 0],  # below the first centre
        [0, 0, 0, 1],  # above the last centre
        [0, 0, 1, 0],
    ]
    p = _one_per_image(values)
    s = stats_fn(p, torch.ones_like(p), 4, soft=True)
    torch.testing.assert_close(
        s.weight[:, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(s.sum_p[:, 0], s.weight[:, 0] * p.view(-1, 1).double())
    torch.testing.assert_close(s.sum_gt, s.weight)


def test_soft_empty_weight_threshold() -> None:
    width = (1.0 + torch.finfo(torch.float32).eps) / 4
    p = torch.tensor([[[0.505 * width, 0.125]]], dtype=torch.float64)  # bin 1 gets 0.005
    y = torch.ones_like(p)
    mean_p, mean_gt, w = B.binned_means(p, y, 4, soft=True)
    torch.testing.assert_close(w[0, 0, 1].item(), 0.005, atol=1e-9, rtol=0)
    assert torch.isnan(mean_p[0, 0, 1]) and not torch.isnan(mean_p[0, 0, 0])
    mean_p2, _, _ = B.binned_means(p, y, 4, soft=True, empty_weight=0.001)
    torch.testing.assert_close(mean_p2[0, 0, 1].item(), p[0, 0, 0].item(), atol=1e-12, rtol=0)
    mean_h, _, counts = B.binned_means(p, y, 4)
    assert counts.tolist() == [[[2.0, 0.0, 0.0, 0.0]]] and torch.isnan(mean_h[0, 0, 1:]).all()


@pytest.mark.parametrize(
    ("p", "y", "kwargs", "exc", "match"),
    [
        (torch.rand(1, 2, 3), torch.rand(1, 2, 4), {}, ValueError, "same shape"),
        (torch.rand(2, 3), torch.rand(2, 3), {}, ValueError, "at least 3 dims"),
        (
            torch.rand(1, 1, 4) + 1,
            torch.rand(1, 1, 4),
            {},
            ValueError,
            r"y_pred must lie in \[0, 1\]",
        ),
        (torch.rand(1, 1, 4), torch.rand(1, 1, 4) - 2, {}, ValueError, r"y must lie in \[0, 1\]"),
        (torch.tensor([[[0.5, float("nan")]]]), torch.ones(1, 1, 2), {}, ValueError, "NaN"),
        (torch.ones(1, 1, 2, dtype=torch.long), torch.ones(1, 1, 2), {}, ValueError, "floating"),
        (torch.rand(1, 1, 4), torch.rand(1, 1, 4), {"num_bins": 0}, ValueError, "num_bins"),
        (torch.rand(1, 1, 4), torch.rand(1, 1, 4), {"num_bins": 2.5}, ValueError, "num_bins"),
        ([0.5], torch.rand(1), {}, TypeError, "torch.Tensor"),
    ],
)
def test_validation_errors(stats_fn, p, y, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        stats_fn(p, y, **kwargs)


def test_validate_false_skips_range_check() -> None:
    p = torch.tensor([[[1.5, -0.5, 0.5]]])
    s = compute_bin_stats(p, torch.ones_like(p), 2, validate=False)
    # >1 clamps to the last bin, <0 to the first, 0.5 < edge 0.50000006 is in the first
    assert s.weight.tolist() == [[[2, 1]]]


def test_concurrent_calls_from_threads() -> None:
    p = torch.rand(2, 3, 3000)
    y = (torch.rand(2, 3, 3000) < p).float()
    ref = compute_bin_stats(p, y, 20)
    out: list[BinStats] = []

    def work() -> None:
        for _ in range(5):
            out.append(compute_bin_stats(p, y, 20))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 15 and all(torch.equal(o.weight, ref.weight) for o in out)


def test_cuda_style_fallback_env(monkeypatch) -> None:
    """CALIBSEG_NO_NUMBA forces the torch path; results agree."""
    p = torch.rand(1, 2, 100)
    y = torch.rand(1, 2, 100).round()
    fast = compute_bin_stats(p, y, 9, right=True)
    monkeypatch.setenv("CALIBSEG_NO_NUMBA", "1")
    assert B._kernels() is None
    slow = compute_bin_stats(p, y, 9, right=True)
    assert torch.equal(fast.weight, slow.weight)
    torch.testing.assert_close(fast.sum_p, slow.sum_p)


def _peak_extra_bytes(fn) -> int:
    """Peak resident memory above the current one while ``fn`` runs (Linux /proc)."""

    def rss(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    try:  # return freed heap pages to the OS so that reusing them counts as new memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = rss("VmRSS:")
    fn()
    return rss("VmHWM:") - base


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc peak-RSS reset"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bounded_extra_memory(dtype) -> None:
    p = torch.empty(1, 4, 96, 96, 96).uniform_().to(dtype)
    y = torch.empty(p.shape, dtype=torch.uint8).random_(0, 2)
    compute_bin_stats(p[:, :1, :8], y[:, :1, :8], chunk_size=1 << 15)  # load kernels
    size = p.numel() * p.element_size()
    extra = _peak_extra_bytes(lambda: compute_bin_stats(p, y, chunk_size=1 << 15))
    # float32 is read in place; float16 is converted 32,768 values (128 KiB) at a time
    assert extra <= 0.25 * size, (
        f"extra peak {extra / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB input"
    )
    # the torch path, by contrast, makes chunk-size int64 temporaries (a check that can fail)
    assert _peak_extra_bytes(lambda: B._compute_bin_stats_torch(p, y)) > 0.25 * size


@pytest.mark.parametrize("num_bins", [999, 4096, 65536])
@pytest.mark.parametrize("right", [False, True])
def test_many_bins_match_bucketize(num_bins: int, right: bool) -> None:
    """The kernel's guess-and-correct bucketize equals torch.bucketize for fine binnings."""
    e = bin_edges(num_bins)
    near = torch.cat([e, torch.nextafter(e, torch.ones_like(e)), torch.nextafter(e, -e - 1)])
    p = torch.cat([near.clamp(0, 1), torch.rand(5000)]).view(1, 1, -1)
    fast = compute_bin_stats(p, torch.zeros_like(p), num_bins, right)
    slow = B._compute_bin_stats_torch(p, torch.zeros_like(p), num_bins, right)
    assert torch.equal(fast.weight, slow.weight)


def test_empty_input_is_one_clear_error(stats_fn) -> None:
    for shape in ((0, 2, 5), (1, 2, 0)):
        with pytest.raises(ValueError, match="empty batch"):
            stats_fn(torch.rand(shape), torch.rand(shape), 4)
