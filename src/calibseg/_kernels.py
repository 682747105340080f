"""Numba CPU kernels behind :mod:`calibseg.binning` (imported lazily, compiled once, cached on disk).

All kernels read ``[B, C, N]`` arrays (B images, C classes, N voxels) **of any strides**: numpy
views of the caller's tensors (channel-first, channel-last, sliced …), never copies. Half
precision values (float16, bfloat16) arrive as their 16-bit patterns (uint16) and are widened
through a 65,536-entry float32 table; other dtypes are read as they are. Work is split into
units of (image, block of voxels), run in parallel; each unit visits its voxels in spans and,
inside a span, every class before moving on, so a channel-last tensor is read in its memory
order (all classes of a voxel from the same cache lines) and a channel-first one row by row.
Each unit fills its own histograms, which are reduced at the end (no atomics, no shared
writes).

Hard binning gives indices equal to ``torch.bucketize`` on float32 values bit for bit. Up to
``NARROW_BINS`` bins, the bin is ``floor(p K)`` computed in loops over tiles of ``TILE``
voxels; a tile holding a value close enough to an inner edge for the guess to be off is
redone exactly (below). More bins use a branch-free bucketize per voxel: the guess
corrected by ±1 with comparisons against the exact float32 edges. Units keep interleaved
sub-histograms so that consecutive voxels in the same bin do not serialise on one slot.
"""

from __future__ import annotations

import os
import threading

import numpy as np

# numba caches compiled kernels next to this file (__pycache__); when the source tree is
# read-only it falls back to a user cache dir. Make that dir explicit and writable.
if not os.environ.get("NUMBA_CACHE_DIR") and not os.access(os.path.dirname(__file__), os.W_OK):
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        os.path.expanduser("~"), ".cache", "calibseg", "numba"
    )

import numba  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import overload  # noqa: E402

LANES = 4
LANES2 = 2  # sub-histograms of the narrow hard kernel
TILE = 512  # voxels whose bins are computed at once (narrow hard kernel)
NARROW_BINS = 64  # at most this many bins: the narrow hard kernel
TAU = 2.0**-10  # largest distance to an edge (in bins) that gets an exact bucketize
BLOCK = 1 << 16  # values (voxels × classes) per parallel unit
SMALL = 1 << 15  # values below which a kernel runs on one thread
_LOCK = threading.Lock()

# 16-bit patterns → float32 values (exact): float16, bfloat16 and uint16 integers
HALF_TABLES = {
    "float16": np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32),
    "bfloat16": (np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)).view(np.float32),
    "uint16": np.arange(1 << 16, dtype=np.float32),
}


def no_table(dtype) -> np.ndarray:
    """The table argument for arrays read as stored: an empty array of their dtype (the dtype
    of the scratch tiles they are staged into when strided)."""
    return np.zeros(0, dtype)


def stage(src, scratch, table):
    """A contiguous 1-D array of the values of ``src``: ``src`` itself when it is contiguous
    and read as stored, else ``scratch[:len(src)]`` filled with them (widened through
    ``table`` for 16-bit patterns)."""
    n = src.shape[0]
    if src.dtype == np.uint16:
        scratch[:n] = table[src]
    else:
        scratch[:n] = src
    return scratch[:n]


@overload(stage, inline="always")
def _stage_impl(src, scratch, table):
    if isinstance(src, types.Array) and src.dtype == types.uint16:

        def widen(src, scratch, table):
            n = src.shape[0]
            for i in range(n):
                scratch[i] = table[src[i]]
            return scratch[:n]

        return widen
    if isinstance(src, types.Array) and src.layout == "C":
        return lambda src, scratch, table: src

    def gather(src, scratch, table):
        n = src.shape[0]
        for i in range(n):
            scratch[i] = src[i]
        return scratch[:n]

    return gather


def hard_edges(num_bins: int, upper_edges32: np.ndarray, right: bool) -> tuple[np.ndarray, ...]:
    """Lower/upper comparison edges ``[K]`` (float32) for the branch-free bucketize.

    ``idx = g - (v <= lo[g]) + (v > hi[g])`` with ``g`` a guess within one bin of the truth;
    ``right=True`` (``v >= e`` / ``v < e``) is the same test against edges one ulp lower.
    """
    up = np.asarray(upper_edges32, dtype=np.float32)
    lo = np.empty(num_bins, np.float32)
    hi = np.empty(num_bins, np.float32)
    lo[0] = -np.inf
    lo[1:] = up[:-1]
    hi[:-1] = up[:-1]
    hi[-1] = np.inf
    if right:
        lo[1:] = np.nextafter(lo[1:], np.float32(-np.inf))
        hi[:-1] = np.nextafter(hi[:-1], np.float32(-np.inf))
    return lo, hi


@njit(inline="always")
def _hard_idx(v32, kf, kmax, lo, hi):
    x = v32 * kf
    x = x if x > 0.0 else np.float32(0.0)  # also maps NaN to 0
    x = x if x < kmax else kmax
    g = np.uintp(x)
    return g - np.uintp(v32 <= lo[g]) + np.uintp(v32 > hi[g])


@njit(inline="always")
def _out_of_unit(v):
    return np.int64(v < 0) + np.int64(v > 1) + np.int64(v != v)


def block_voxels(n_classes: int) -> int:
    """Voxels per parallel unit: about :data:`BLOCK` values, a multiple of :data:`TILE`."""
    return max(TILE, (BLOCK // max(n_classes, 1)) // TILE * TILE)


def hard_hist(p, y, tp, ty, lo, hi, cnt_out, sp_out, sy_out, span):
    """Accumulate hard-binning counts and sums of ``p, y [B, C, N]`` into ``cnt_out`` (int64),
    ``sp_out`` (float64) and ``sy_out`` (int64 for integer targets, else float64),
    ``[B, C, K]``. ``tp``/``ty``: half tables (or :func:`no_table`); ``span``: voxels of one
    class visited before the next class (:data:`TILE` for channel-last data).

    Returns the numbers of values of ``p`` and of ``y`` outside [0, 1] or NaN.
    """
    block = block_voxels(p.shape[1])
    if lo.shape[0] > NARROW_BINS:
        return hard_hist_wide(p, y, tp, ty, lo, hi, cnt_out, sp_out, sy_out, block)
    tau = guess_tolerance(hi)
    return hard_hist_narrow(p, y, tp, ty, lo, hi, cnt_out, sp_out, sy_out, block, span, tau)


def guess_tolerance(hi: np.ndarray) -> np.float32:
    """Distance ``tau`` (in bins, a power of 2 up to ``TAU``) such that the guess
    ``floor(p K)`` can differ from the bin of ``p`` only where ``p K`` lies within ``tau`` of
    an inner edge index; 0 if the edges ``hi [K]`` allow no such bound.

    The float32 product ``p K`` is within ``2^-24 K`` of the exact one (``<= tau / 4``) and
    each comparison edge times K is within ``tau / 2`` of its index.
    """
    k = hi.shape[0]
    dev = np.abs(hi[:-1].astype(np.float64) * k - np.arange(1, k)).max() if k > 1 else 0.0
    need = max(4 * k * 2.0**-24, 2 * dev)
    tau = 2.0 ** np.ceil(np.log2(need))
    return np.float32(tau if tau <= TAU else 0.0)


@njit(parallel=True, cache=True, nogil=True)
def hard_hist_narrow(p, y, tp, ty, lo, hi, cnt_out, sp_out, sy_out, block, span, tau):
    """:func:`hard_hist` for up to :data:`NARROW_BINS` bins, one pass over the data.

    Per tile of ``TILE`` voxels of one class (staged contiguously in L1 when strided),
    vectorised loops check the ranges of ``p`` and ``y`` and compute ``2 * bin + (y != 0)``
    into a uint8 scratch, the bin as the number of upper edges below the value
    (``torch.bucketize`` semantics, no table gather); a scalar loop then adds 1 and ``p`` to
    ``2 LANES K`` slots, from which counts, target sums and probability sums are read. Tiles
    with non-binary targets add their targets separately.
    """
    n_img, n_cls, n = p.shape
    k = lo.shape[0]
    k2 = 2 * k
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    units = n_img * nb
    part_c = np.zeros((units, n_cls, k), np.int64)
    part_p = np.zeros((units, n_cls, k), np.float64)
    part_y = np.zeros((units, n_cls, k), sy_out.dtype)
    bad = np.zeros((units, 2), np.int64)
    for u in prange(units):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        hc = np.zeros((n_cls, LANES2 * k2), np.int64)
        hp = np.zeros((n_cls, LANES2 * k2), np.float64)
        hy = np.zeros((n_cls, k), sy_out.dtype)
        idx = np.empty(TILE, np.uint8)
        ps = np.empty(TILE, tp.dtype)
        ys = np.empty(TILE, ty.dtype)
        bp = 0
        by = 0
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            for c in range(n_cls):
                hcc = hc[c]
                hpc = hp[c]
                hyc = hy[c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    tn = t1 - t0
                    pt = stage(p[b, c, t0:t1], ps, tp)
                    yt = stage(y[b, c, t0:t1], ys, ty)
                    nonbin = 0
                    if tau > 0:
                        near = 0
                        for i in range(tn):
                            v = pt[i]
                            w = yt[i]
                            bp += np.int64((v < 0) | (v > 1) | (v != v))
                            by += np.int64((w < 0) | (w > 1) | (w != w))
                            nonbin += np.int64((w != 0) & (w != 1))
                            x = np.float32(v) * kf
                            x = x if x > 0.0 else np.float32(0.0)  # also maps NaN to 0
                            x = x if x < kf else kf
                            gi = np.int32(x)
                            fr = x - np.float32(gi)
                            near += np.int64(
                                ((fr < tau) & (x > 0.5) & (x < kf - 0.5))
                                | ((fr > 1 - tau) & (x < kmax))
                            )
                            g = gi if gi < k - 1 else np.int32(k - 1)
                            idx[i] = np.uint8(2 * g + np.int32(w != 0))
                        if near:  # a value within tau of an inner edge: exact bins for this tile
                            for i in range(tn):
                                g = _hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)
                                idx[i] = np.uint8(2 * g) + (idx[i] & np.uint8(1))
                    else:
                        for i in range(tn):
                            v = pt[i]
                            w = yt[i]
                            bp += np.int64((v < 0) | (v > 1) | (v != v))
                            by += np.int64((w < 0) | (w > 1) | (w != w))
                            nonbin += np.int64((w != 0) & (w != 1))
                            idx[i] = np.uint8(w != 0)
                        for j in range(k - 1):
                            ej = hi[j]
                            for i in range(tn):
                                idx[i] += np.uint8(2) * np.uint8(np.float32(pt[i]) > ej)
                    tq = (tn // LANES2) * LANES2
                    for i0 in range(0, tq, LANES2):
                        for ln in range(LANES2):
                            j = np.uintp(idx[i0 + ln]) + np.uintp(ln * k2)
                            hcc[j] += 1
                            hpc[j] += pt[i0 + ln]
                    for i in range(tq, tn):
                        j = np.uintp(idx[i])
                        hcc[j] += 1
                        hpc[j] += pt[i]
                    if nonbin:  # the targets themselves, minus the (y != 0) counted in hc
                        for i in range(tn):
                            j = np.uintp(idx[i] >> 1)
                            hyc[j] += yt[i]
                            hyc[j] -= idx[i] & 1
        for c in range(n_cls):
            for ln in range(LANES2):
                for j in range(k):
                    a = ln * k2 + 2 * j
                    part_c[u, c, j] += hc[c, a] + hc[c, a + 1]
                    part_y[u, c, j] += hc[c, a + 1]
                    part_p[u, c, j] += hp[c, a] + hp[c, a + 1]
            for j in range(k):
                part_y[u, c, j] += hy[c, j]
        bad[u, 0] = bp
        bad[u, 1] = by
    _reduce(part_c, part_p, part_y, nb, cnt_out, sp_out, sy_out)
    return bad[:, 0].sum(), bad[:, 1].sum()


@njit(inline="always")
def _reduce(part_w, part_p, part_y, nb, w_out, sp_out, sy_out):
    units, n_cls, k = part_w.shape
    for u in range(units):
        b = u // nb
        for c in range(n_cls):
            for j in range(k):
                w_out[b, c, j] += part_w[u, c, j]
                sp_out[b, c, j] += part_p[u, c, j]
                sy_out[b, c, j] += part_y[u, c, j]


@njit(parallel=True, cache=True, nogil=True)
def hard_hist_wide(p, y, tp, ty, lo, hi, cnt_out, sp_out, sy_out, block):
    """:func:`hard_hist` for more than :data:`NARROW_BINS` bins (bucketize by guess + gather),
    class by class within a block (one histogram of ``LANES K`` slots at a time).

    Count and positive targets share one int64 per bin (count in the low 32 bits, ``y != 0``
    in the high 32 bits: one update instead of two); tiles with non-binary targets add
    ``y - (y != 0)`` to a separate target sum. Returns the numbers of values of ``p`` and of
    ``y`` outside [0, 1] or NaN.
    """
    n_img, n_cls, n = p.shape
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    units = n_img * nb
    part_c = np.zeros((units, n_cls, k), np.int64)
    part_p = np.zeros((units, n_cls, k), np.float64)
    part_y = np.zeros((units, n_cls, k), sy_out.dtype)
    bad = np.zeros((units, 2), np.int64)
    one = np.int64(1)
    hib = np.int64(1 << 32)
    for u in prange(units):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        bp = 0
        by = 0
        hc = np.zeros(LANES * k, np.int64)
        hp = np.zeros(LANES * k, np.float64)
        hy = np.zeros(k, sy_out.dtype)
        ps = np.empty(TILE, tp.dtype)
        ys = np.empty(TILE, ty.dtype)
        for c in range(n_cls):
            hc[:] = 0
            hp[:] = 0.0
            hy[:] = 0
            for t0 in range(s, e, TILE):
                t1 = min(t0 + TILE, e)
                m = t1 - t0
                pt = stage(p[b, c, t0:t1], ps, tp)
                yt = stage(y[b, c, t0:t1], ys, ty)
                nonbin = 0
                for i in range(m):
                    v = pt[i]
                    w = yt[i]
                    bp += np.int64((v < 0) | (v > 1) | (v != v))
                    by += np.int64((w < 0) | (w > 1) | (w != w))
                    nonbin += np.int64((w != 0) & (w != 1))
                m4 = (m // LANES) * LANES
                for i0 in range(0, m4, LANES):
                    for ln in range(LANES):
                        v = pt[i0 + ln]
                        j = _hard_idx(np.float32(v), kf, kmax, lo, hi) + np.uintp(ln * k)
                        hc[j] += one + hib * np.int64(yt[i0 + ln] != 0)
                        hp[j] += v
                for i in range(m4, m):
                    v = pt[i]
                    j = _hard_idx(np.float32(v), kf, kmax, lo, hi)
                    hc[j] += one + hib * np.int64(yt[i] != 0)
                    hp[j] += v
                if nonbin:
                    for i in range(m):
                        w = yt[i]
                        j = _hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)
                        hy[j] += w
                        hy[j] -= np.int64(w != 0)
            for ln in range(LANES):
                for j in range(k):
                    cc = hc[ln * k + j]
                    part_c[u, c, j] += cc & 0xFFFFFFFF
                    part_y[u, c, j] += cc >> 32
                    part_p[u, c, j] += hp[ln * k + j]
            for j in range(k):
                part_y[u, c, j] += hy[j]
        bad[u, 0] = bp
        bad[u, 1] = by
    _reduce(part_c, part_p, part_y, nb, cnt_out, sp_out, sy_out)
    return bad[:, 0].sum(), bad[:, 1].sum()


@njit(inline="always")
def _soft_split(v, inv_width, k):
    t = v * inv_width - 0.5
    lof = np.floor(t)
    lof = lof if lof > 0.0 else 0.0
    top = np.float64(k - 2) if k > 1 else 0.0
    lof = lof if lof < top else top
    d = t - lof
    inside = d >= 0.0 and d <= 1.0 and k > 1  # where d/dp of the split is non-zero
    fr = d if d > 0.0 else 0.0
    fr = fr if fr < 1.0 else 1.0
    if k == 1:
        fr = 0.0
    lo = np.uintp(lof)
    hi = lo + np.uintp(1) if k > 1 else lo
    return lo, hi, fr, inside


def soft_hist(p, y, tp, ty, inv_width, k, w_out, sp_out, sy_out, span):
    """Soft binning: each value splits unit weight between the two bins whose centres
    bracket it. Accumulates float64 ``w_out/sp_out/sy_out [B, C, K]``; returns the numbers of
    values of ``p`` and ``y`` outside [0, 1] or NaN.
    """
    block = block_voxels(p.shape[1])
    return soft_hist_kernel(p, y, tp, ty, inv_width, k, w_out, sp_out, sy_out, block, span)


@njit(parallel=True, cache=True, nogil=True)
def soft_hist_kernel(p, y, tp, ty, inv_width, k, w_out, sp_out, sy_out, block, span):
    """:func:`soft_hist` on ``[B, C, N]`` arrays (two interleaved sub-histograms per class)."""
    n_img, n_cls, n = p.shape
    nb = (n + block - 1) // block
    units = n_img * nb
    part_w = np.zeros((units, n_cls, k), np.float64)
    part_p = np.zeros((units, n_cls, k), np.float64)
    part_y = np.zeros((units, n_cls, k), np.float64)
    bad = np.zeros((units, 2), np.int64)
    for u in prange(units):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        hw = np.zeros((n_cls, 2 * k), np.float64)
        hp = np.zeros((n_cls, 2 * k), np.float64)
        hy = np.zeros((n_cls, 2 * k), np.float64)
        ps = np.empty(TILE, tp.dtype)
        ys = np.empty(TILE, ty.dtype)
        bp = 0
        by = 0
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            for c in range(n_cls):
                hwc = hw[c]
                hpc = hp[c]
                hyc = hy[c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    pt = stage(p[b, c, t0:t1], ps, tp)
                    yt = stage(y[b, c, t0:t1], ys, ty)
                    for i in range(t1 - t0):
                        ln = np.uintp((i & 1) * k)
                        v = np.float64(pt[i])
                        w = np.float64(yt[i])
                        lo, hi, fr, _ = _soft_split(v, inv_width, k)
                        a = 1.0 - fr
                        lo += ln
                        hi += ln
                        hwc[lo] += a
                        hwc[hi] += fr
                        hpc[lo] += a * v
                        hpc[hi] += fr * v
                        hyc[lo] += a * w
                        hyc[hi] += fr * w
                        bp += _out_of_unit(v)
                        by += _out_of_unit(w)
        for c in range(n_cls):
            for ln in range(2):
                for j in range(k):
                    part_w[u, c, j] += hw[c, ln * k + j]
                    part_p[u, c, j] += hp[c, ln * k + j]
                    part_y[u, c, j] += hy[c, ln * k + j]
        bad[u, 0] = bp
        bad[u, 1] = by
    _reduce(part_w, part_p, part_y, nb, w_out, sp_out, sy_out)
    return bad[:, 0].sum(), bad[:, 1].sum()


def hard_grad(p, tp, lo, hi, g_sp, g_sy, gp, gy, want_y, span):
    """Backward of hard binned sums on ``[B, C, N]`` arrays:
    ``gp[i] = g_sp[bin(i)]``, ``gy[i] = g_sy[bin(i)]`` (tables ``[B, C, K]`` float64)."""
    block = block_voxels(p.shape[1])
    hard_grad_kernel(p, tp, lo, hi, g_sp, g_sy, gp, gy, want_y, block, span)


@njit(parallel=True, cache=True, nogil=True)
def hard_grad_kernel(p, tp, lo, hi, g_sp, g_sy, gp, gy, want_y, block, span):
    """:func:`hard_grad` by (image, block of voxels) units."""
    n_img, n_cls, n = p.shape
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    for u in prange(n_img * nb):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        ps = np.empty(TILE, tp.dtype)
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            for c in range(n_cls):
                tsp = g_sp[b, c]
                tsy = g_sy[b, c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    pt = stage(p[b, c, t0:t1], ps, tp)
                    gpr = gp[b, c, t0:t1]
                    for i in range(t1 - t0):
                        gpr[i] = tsp[_hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)]
                    if want_y:
                        gyr = gy[b, c, t0:t1]
                        for i in range(t1 - t0):
                            gyr[i] = tsy[_hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)]


def soft_grad(p, y, tp, ty, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, span):
    """Backward of soft binned sums (exact derivative of the two-neighbour split) on
    ``[B, C, N]`` arrays, tables ``g_* [B, C, K]`` float64.

    With ``a = 1 - f``, ``f`` the upper-bin share and ``df/dp = inv_width`` inside the
    bracket (0 where the split is clamped):
    ``gp = a g_sp[lo] + f g_sp[hi] + df/dp ((g_w[hi] - g_w[lo]) + p (g_sp[hi] - g_sp[lo])
    + y (g_sy[hi] - g_sy[lo]))``; ``gy = a g_sy[lo] + f g_sy[hi]``.
    """
    block = block_voxels(p.shape[1])
    soft_grad_kernel(p, y, tp, ty, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, block, span)


@njit(parallel=True, cache=True, nogil=True)
def soft_grad_kernel(p, y, tp, ty, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, block, span):
    """:func:`soft_grad` by (image, block of voxels) units."""
    n_img, n_cls, n = p.shape
    nb = (n + block - 1) // block
    for u in prange(n_img * nb):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        ps = np.empty(TILE, tp.dtype)
        ys = np.empty(TILE, ty.dtype)
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            for c in range(n_cls):
                tw = g_w[b, c]
                tsp = g_sp[b, c]
                tsy = g_sy[b, c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    pt = stage(p[b, c, t0:t1], ps, tp)
                    yt = stage(y[b, c, t0:t1], ys, ty)
                    gpr = gp[b, c, t0:t1]
                    for i in range(t1 - t0):
                        v = np.float64(pt[i])
                        w = np.float64(yt[i])
                        lo, hi, fr, inside = _soft_split(v, inv_width, k)
                        a = 1.0 - fr
                        d = inv_width if inside else 0.0
                        gl = tsp[lo]
                        gh = tsp[hi]
                        gyl = tsy[lo]
                        gyh = tsy[hi]
                        gpr[i] = (
                            a * gl
                            + fr * gh
                            + d * ((tw[hi] - tw[lo]) + v * (gh - gl) + w * (gyh - gyl))
                        )
                    if want_y:
                        gyr = gy[b, c, t0:t1]
                        for i in range(t1 - t0):
                            lo, hi, fr, _ = _soft_split(np.float64(pt[i]), inv_width, k)
                            gyr[i] = (1.0 - fr) * tsy[lo] + fr * tsy[hi]


def run(fn, *args):
    """Call a kernel (first argument ``p [B, C, N]``) with the torch thread count (one
    thread for small inputs, where waking a pool costs more than it saves), one call at a
    time per process.
    """
    import torch

    size = args[0].size
    with _LOCK:
        torch_threads = torch.get_num_threads()
        n = 1 if size < SMALL else min(torch_threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(max(1, n))
        if torch.get_num_threads() != torch_threads:
            # starting numba's OpenMP pool resets the process-wide OpenMP thread count
            torch.set_num_threads(torch_threads)
        return fn(*args)
