"""Every memory layout and dtype the kernels read in place gives MONAI's counts.

Expectations come from ``monai.metrics.calibration_binning`` (MONAI 1.6.1) on contiguous
float32 copies of the same values; sums agree to float64 rounding. Soft binning and gradients
(no MONAI counterpart) must not depend on the layout: strided, channel-last, half and integer
inputs give the results of the contiguous float32 inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.metrics.calibration import calibration_binning

from calibseg import binning as B
from calibseg.binning import bin_edges, binned_sums, compute_bin_stats

SHAPE = (2, 4, 30, 28, 24)  # 20,160 voxels: more than one parallel block per image


def _realistic(shape=SHAPE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of a smooth, scaled logit field (most values near 0 or 1) and class labels."""
    g = torch.Generator().manual_seed(seed)
    b, c, *sp = shape
    noise = torch.randn(b, c, *sp, generator=g)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(sp)]
    logits = pool(noise, 5, 1, 2) * 25
    p = logits.softmax(1)
    p.view(-1)[::997] = bin_edges(20)[7]  # some values exactly on an inner edge
    labels = (logits + torch.randn(logits.shape, generator=g)).argmax(1)
    return p, labels


def _channel_last(t: torch.Tensor) -> torch.Tensor:
    """The same values stored channel-last, viewed as [B, C, *spatial] (not contiguous)."""
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


def _targets(labels: torch.Tensor, c: int) -> dict[str, torch.Tensor]:
    oh = F.one_hot(labels, c).movedim(-1, 1)  # int64 channel-last view, as in the README
    return {
        "int64 view": oh,
        "float32 view": oh.float(),
        "float32 contiguous": oh.float().contiguous(),
        "uint8 view": oh.to(torch.uint8),
        "bool view": oh.bool(),
        "float16 view": oh.half(),
        "bfloat16 view": oh.bfloat16(),
        "uint8 contiguous": oh.to(torch.uint8).contiguous(),
        "float32 batch-broadcast": oh[:1].float().expand(oh.shape[0], *oh.shape[1:]),
    }


def _predictions(p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "float32": p,
        "float32 channel-last": _channel_last(p),
        "float64 channel-last": _channel_last(p.double()),
        "float16": p.half(),
        "bfloat16 channel-last": _channel_last(p.bfloat16()),
    }


def _monai_counts(p: torch.Tensor, y: torch.Tensor, num_bins: int, right: bool) -> torch.Tensor:
    return calibration_binning(p.float().contiguous(), y.float().contiguous(), num_bins, right)[2]


@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("pname", list(_predictions(torch.zeros(1, 2, 2))))
def test_every_layout_and_dtype_gives_monai_counts(pname: str, right: bool) -> None:
    p0, labels = _realistic()
    p = _predictions(p0)[pname]
    for yname, y in _targets(labels, SHAPE[1]).items():
        s = compute_bin_stats(p, y, 20, right=right)
        counts = _monai_counts(p, y, 20, right)
        assert torch.equal(s.weight, counts.long()), (pname, yname)
        mean_p, mean_gt, _ = calibration_binning(p.float(), y.float(), 20, right)
        ours_p, ours_gt, _ = s.means()
        torch.testing.assert_close(ours_p, mean_p.double(), atol=1e-5, rtol=0, equal_nan=True)
        torch.testing.assert_close(ours_gt, mean_gt.double(), atol=1e-6, rtol=0, equal_nan=True)
        # the target sums are exact: the number of positives per bin, whatever the dtype
        ref = B._compute_bin_stats_torch(p.float().contiguous(), y.float().contiguous(), 20, right)
        assert torch.equal(s.sum_gt, ref.sum_gt), (pname, yname)


@pytest.mark.parametrize("num_bins", [5, 100])
def test_sliced_cropped_and_other_ranks_give_monai_counts(num_bins: int) -> None:
    p0, labels = _realistic((3, 5, 26, 22, 18), seed=1)
    y0 = F.one_hot(labels, 5).movedim(-1, 1)
    cases = {
        "classes 1: (include_background=False)": (p0[:, 1:], y0[:, 1:].float()),
        "every other image": (p0[::2], y0[::2].to(torch.uint8)),
        "crop (spatial dims not mergeable)": (_channel_last(p0)[..., 3:-4, 2:], y0[..., 3:-4, 2:]),
        "2-D channel-last": tuple(t[:, :, 5] for t in (_channel_last(p0), y0.bool())),
    }
    for name, (p, y) in cases.items():
        s = compute_bin_stats(p, y, num_bins, chunk_size=4096)
        assert torch.equal(s.weight, _monai_counts(p, y, num_bins, False).long()), name
    p1, labels1 = _realistic((1, 3, 2000), seed=2)
    y1 = F.one_hot(labels1, 3).movedim(-1, 1).half()
    assert torch.equal(
        compute_bin_stats(p1, y1, 20).weight, _monai_counts(p1, y1, 20, False).long()
    )


@pytest.mark.parametrize("soft", [False, True])
def test_soft_stats_and_gradients_do_not_depend_on_layout(soft: bool) -> None:
    p0, labels = _realistic((2, 3, 20, 18, 16), seed=3)

    def fwd_bwd(p: torch.Tensor, y: torch.Tensor):
        leaf = p.detach().clone().requires_grad_()
        w, sp, sg = binned_sums(leaf, y, 20, soft=soft)
        torch.manual_seed(0)
        coeff = torch.randn(3, *w.shape, dtype=w.dtype)
        loss = (coeff[1] * sp).sum() + (coeff[2] * sg).sum()
        if soft:
            loss = loss + (coeff[0] * w).sum()
        loss.backward()
        return (w, sp, sg), leaf.grad

    for name, y in _targets(labels, 3).items():
        # the reference: the same target values as a contiguous float32 tensor (the batch-broadcast
        # target repeats image 0, so it is not y_ref)
        y_c = y.float().contiguous()
        ref = compute_bin_stats(p0, y_c, 20, soft=soft)
        out_ref, g_ref = fwd_bwd(p0, y_c)
        for pname, p in (("contiguous", p0), ("channel-last", _channel_last(p0))):
            s = compute_bin_stats(p, y, 20, soft=soft)
            torch.testing.assert_close(s.weight, ref.weight, rtol=1e-12, atol=1e-9)
            torch.testing.assert_close(s.sum_p, ref.sum_p, rtol=1e-12, atol=1e-9)
            torch.testing.assert_close(s.sum_gt, ref.sum_gt, rtol=1e-12, atol=1e-9)
            out, g = fwd_bwd(p, y)
            for a, b in zip(out, out_ref, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
            assert torch.equal(g, g_ref), (name, pname)


def test_target_gradient_in_a_half_dtype() -> None:
    p0, labels = _realistic((1, 3, 9, 8, 7), seed=4)
    y = F.one_hot(labels, 3).movedim(-1, 1).half().requires_grad_()
    yf = y.detach().float().contiguous().requires_grad_()
    for soft in (False, True):
        for t in (y, yf):
            t.grad = None
            binned_sums(p0, t, 10, soft=soft)[2].sum().backward()
        assert y.grad.dtype == torch.float16
        torch.testing.assert_close(y.grad.float(), yf.grad, rtol=1e-3, atol=1e-3)


def test_inputs_are_read_in_place_without_copies(monkeypatch) -> None:
    """Channel-last and half inputs reach the kernel as views of their own storage."""
    seen = []
    real = B._kernel_array

    def spy(kern, t):
        out = real(kern, t)
        src = out[0]  # (floats, half bits, bytes, kind, width, *strides)
        at = {kern.DIRECT: 0, kern.FLOAT16: 1, kern.BFLOAT16: 1, kern.WIDE: 2}[src[3]]
        data = src[at]  # the array of the source's kind
        assert data.size > 0 and all(a.size == 0 for i, a in enumerate(src[:3]) if i != at)
        seen.append((t.data_ptr(), data.__array_interface__["data"][0]))
        return out

    monkeypatch.setattr(B, "_kernel_array", spy)
    p0, labels = _realistic((1, 4, 10, 10, 10))
    compute_bin_stats(_channel_last(p0.half()), F.one_hot(labels, 4).movedim(-1, 1).bool())
    assert len(seen) == 2 and all(a == b for a, b in seen)


@pytest.mark.parametrize(
    ("dtype", "bad"),
    [
        (torch.uint8, 2),
        (torch.int16, 2),
        (torch.int16, 256),
        (torch.int16, -1),
        (torch.int32, 257),
        (torch.int64, 256),
        (torch.int64, -1),
        (torch.int64, 2**32),  # low 32 bits 0
        (torch.int64, 2**32 + 1),  # low 32 bits 1
    ],
)
def test_integer_targets_outside_0_1_are_refused_in_any_layout(dtype, bad: int) -> None:
    """The kernel reads integer targets itself (no min/max pass); a value whose low byte or low
    32 bits are 0 or 1 but which is not (256, 257, 2^32, 2^32 + 1, or -1 in two's complement)
    is refused too, with or without validate."""
    p, labels = _realistic((1, 3, 12, 10, 8), seed=5)
    y = F.one_hot(labels, 3).movedim(-1, 1).to(dtype)  # channel-last view
    y[0, 1, 4, 5, 6] = bad
    for validate in (True, False):
        with pytest.raises(ValueError, match=r"target must lie in \[0, 1\], got integer"):
            compute_bin_stats(p, y, 20, validate=validate)


@pytest.mark.parametrize("classes", [2, 3, 4, 5, 9])
def test_channel_last_staging_for_every_class_count(classes: int) -> None:
    """Channel-last data of 2 to 4 classes is staged for all classes in one pass, other class
    counts class by class: every count gives MONAI's counts (hard) and the float64 torch path's
    sums (soft), for channel-last predictions and one-hot target views of several dtypes."""
    p0, labels = _realistic((2, classes, 21, 19, 17), seed=10 + classes)
    p = _channel_last(p0)
    oh = F.one_hot(labels, classes).movedim(-1, 1)
    for y in (oh, oh.float(), oh.to(torch.uint8), oh.half()):
        s = compute_bin_stats(p, y, 20)
        assert torch.equal(s.weight, _monai_counts(p, y, 20, False).long()), (classes, y.dtype)
        ref = B._compute_bin_stats_torch(p0.double(), y.double().contiguous(), 20, soft=True)
        soft = compute_bin_stats(p, y, 20, soft=True)
        for a, b in ((soft.weight, ref.weight), (soft.sum_p, ref.sum_p), (soft.sum_gt, ref.sum_gt)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_channel_last_pairs_with_soft_and_bad_values(classes: int) -> None:
    """Channel-last predictions with channel-last targets (binned in memory order, unstaged;
    half predictions widened by the slot loop): spans holding soft targets give torch's sums,
    and values outside [0, 1] or NaN anywhere are reported, as for inputs stored class by
    class."""
    p0, labels = _realistic((2, classes, 21, 19, 17), seed=20 + classes)
    y0 = F.one_hot(labels, classes).movedim(-1, 1).float()
    y0[1, 0, 3, 4, 5] = 0.25  # image 1, not the first span
    y0[0, classes - 1, 20, 18, 16] = 0.5  # the last voxel
    for p, y in (
        (_channel_last(p0), _channel_last(y0)),
        (_channel_last(p0.double()), _channel_last(y0)),
        (_channel_last(p0.half()), _channel_last(y0.half())),
        (_channel_last(p0.bfloat16()), _channel_last(y0)),
    ):
        s = compute_bin_stats(p, y, 20)
        ref = B._compute_bin_stats_torch(p.float().contiguous(), y.float().contiguous(), 20)
        assert torch.equal(s.weight, ref.weight) and torch.equal(s.sum_gt, ref.sum_gt), p.dtype
        torch.testing.assert_close(s.sum_p, ref.sum_p, rtol=1e-10, atol=1e-9)
    cases = [
        ("p", (1, 1, 10, 10, 10), float("nan"), "NaN"),
        ("p", (0, 0, 2, 3, 4), 1.5, r"y_pred must lie in \[0, 1\]"),
        ("y", (1, classes - 1, 1, 1, 1), -0.5, r"y must lie in \[0, 1\]"),
    ]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for which, where, value, match in cases:
            p1, y1 = p0.to(dtype, copy=True), y0.clone()
            (p1 if which == "p" else y1)[where] = value
            with pytest.raises(ValueError, match=match):
                compute_bin_stats(_channel_last(p1), _channel_last(y1), 20)
    # integer one-hot views (8-byte targets, coded in memory order): MONAI's counts; a value
    # other than 0 and 1 in any span is reported
    yi = F.one_hot(labels, classes).movedim(-1, 1)
    s = compute_bin_stats(_channel_last(p0), yi, 20)
    assert torch.equal(s.weight, _monai_counts(p0, yi, 20, False).long())
    for value in (2, -1):
        y1 = yi.clone()
        assert y1.stride() == yi.stride()
        y1[1, 0, 3, 4, 5] = value
        with pytest.raises(ValueError, match=r"target must lie in \[0, 1\], got integer"):
            compute_bin_stats(_channel_last(p0), y1, 20)
