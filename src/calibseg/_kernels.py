"""Numba CPU kernels behind :mod:`calibseg.binning` (imported lazily, compiled once, cached on disk).

All kernels take row-major 2-D arrays ``[R, N]`` (R = images × classes, N = voxels) and
work in parallel over units of ``block`` voxels of one row; each unit fills its own
histogram row, which are reduced at the end (no atomics, no shared writes).

Hard binning gives indices equal to ``torch.bucketize`` on float32 values bit for bit. Up to
``NARROW_BINS`` bins, the bin is ``floor(p K)`` computed in vectorised loops over tiles of
``TILE`` voxels; a tile holding a value close enough to an inner edge for the guess to be
off is redone exactly (below). More bins use a branch-free bucketize per voxel: the guess
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
from numba import njit, prange  # noqa: E402

LANES = 4
LANES2 = 2  # sub-histograms of the narrow hard kernel
TILE = 512  # voxels whose bins are computed at once (narrow hard kernel)
NARROW_BINS = 64  # at most this many bins: the narrow hard kernel
TAU = 2.0**-10  # largest distance to an edge (in bins) that gets an exact bucketize
BLOCK = 1 << 16
SMALL = 1 << 15  # values below which a kernel runs on one thread
_LOCK = threading.Lock()


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


def hard_hist(p, y, lo, hi, cnt_out, sp_out, sy_out, block):
    """Accumulate hard-binning counts and sums of ``p, y [R, N]`` into ``cnt_out`` (int64),
    ``sp_out`` (float64) and ``sy_out`` (int64 for integer targets, else float64), ``[R, K]``.

    Returns the numbers of values of ``p`` and of ``y`` outside [0, 1] or NaN.
    """
    if lo.shape[0] > NARROW_BINS:
        return hard_hist_wide(p, y, lo, hi, cnt_out, sp_out, sy_out, block)
    tau = guess_tolerance(hi)
    return hard_hist_narrow(p, y, lo, hi, cnt_out, sp_out, sy_out, block, tau)


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
def hard_hist_narrow(p, y, lo, hi, cnt_out, sp_out, sy_out, block, tau):
    """:func:`hard_hist` for up to :data:`NARROW_BINS` bins, one pass over the data.

    Per tile of ``TILE`` voxels (in L1), vectorised loops check the ranges of ``p`` and ``y``
    and compute ``2 * bin + (y != 0)`` into a uint8 scratch, the bin as the number of upper
    edges below the value (``torch.bucketize`` semantics, no table gather); a scalar loop
    then adds 1 and ``p`` to ``2 LANES K`` slots, from which counts, target sums and
    probability sums are read. Tiles with non-binary targets add their targets separately.
    """
    r_rows, n = p.shape
    k = lo.shape[0]
    k2 = 2 * k
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    units = r_rows * nb
    part_c = np.zeros((units, k), np.int64)
    part_p = np.zeros((units, k), np.float64)
    part_y = np.zeros((units, k), sy_out.dtype)
    bad = np.zeros((units, 2), np.int64)
    for u in prange(units):
        r = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        pr = p[r, s:e]
        yr = y[r, s:e]
        m = e - s
        hc = np.zeros(LANES2 * k2, np.int64)
        hp = np.zeros(LANES2 * k2, np.float64)
        hy = np.zeros(k, sy_out.dtype)
        idx = np.empty(TILE, np.uint8)
        bp = 0
        by = 0
        for t0 in range(0, m, TILE):
            tn = min(TILE, m - t0)
            pt = pr[t0 : t0 + tn]
            yt = yr[t0 : t0 + tn]
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
                        ((fr < tau) & (x > 0.5) & (x < kf - 0.5)) | ((fr > 1 - tau) & (x < kmax))
                    )
                    g = gi if gi < k - 1 else np.int32(k - 1)
                    idx[i] = np.uint8(2 * g + np.int32(w != 0))
                if near:  # some value within tau of an inner edge: exact bins for this tile
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
                    hc[j] += 1
                    hp[j] += pt[i0 + ln]
            for i in range(tq, tn):
                j = np.uintp(idx[i])
                hc[j] += 1
                hp[j] += pt[i]
            if nonbin:  # the targets themselves, minus the (y != 0) counted in hc
                for i in range(tn):
                    j = np.uintp(idx[i] >> 1)
                    hy[j] += yt[i]
                    hy[j] -= idx[i] & 1
        for ln in range(LANES2):
            for j in range(k):
                a = ln * k2 + 2 * j
                part_c[u, j] += hc[a] + hc[a + 1]
                part_y[u, j] += hc[a + 1]
                part_p[u, j] += hp[a] + hp[a + 1]
        for j in range(k):
            part_y[u, j] += hy[j]
        bad[u, 0] = bp
        bad[u, 1] = by
    for u in range(units):
        r = u // nb
        for j in range(k):
            cnt_out[r, j] += part_c[u, j]
            sp_out[r, j] += part_p[u, j]
            sy_out[r, j] += part_y[u, j]
    return bad[:, 0].sum(), bad[:, 1].sum()


@njit(parallel=True, cache=True, nogil=True)
def hard_hist_wide(p, y, lo, hi, cnt_out, sp_out, sy_out, block):
    """:func:`hard_hist` for more than :data:`NARROW_BINS` bins (bucketize by guess + gather).

    Per block: a vectorisable pass counts values outside [0, 1] or NaN and non-binary
    targets; blocks of binary targets then keep count and target sum in one int64 per bin
    (count in the low 32 bits, positives in the high 32 bits: one update instead of two).
    Returns the numbers of values of ``p`` and of ``y`` outside [0, 1] or NaN.
    """
    r_rows, n = p.shape
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    units = r_rows * nb
    part_c = np.zeros((units, k), np.int64)
    part_p = np.zeros((units, k), np.float64)
    part_y = np.zeros((units, k), sy_out.dtype)
    bad = np.zeros((units, 2), np.int64)
    for u in prange(units):
        r = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        pr = p[r, s:e]
        yr = y[r, s:e]
        m = e - s
        bp = 0
        for i in range(m):
            v = pr[i]
            bp += np.int64((v < 0) | (v > 1) | (v != v))
        by = 0
        nonbin = 0
        for i in range(m):
            w = yr[i]
            by += np.int64((w < 0) | (w > 1) | (w != w))
            nonbin += np.int64((w != 0) & (w != 1))
        m4 = (m // LANES) * LANES
        hp = np.zeros(LANES * k, np.float64)
        if nonbin == 0:
            hc = np.zeros(LANES * k, np.int64)
            one = np.int64(1)
            hib = np.int64(1 << 32)
            for i0 in range(0, m4, LANES):
                i = np.uintp(i0)
                for ln in range(LANES):
                    v = pr[i + np.uintp(ln)]
                    w = yr[i + np.uintp(ln)]
                    j = _hard_idx(np.float32(v), kf, kmax, lo, hi) + np.uintp(ln * k)
                    hc[j] += one + hib * np.int64(w != 0)
                    hp[j] += v
            for i in range(m4, m):
                v = pr[i]
                j = _hard_idx(np.float32(v), kf, kmax, lo, hi)
                hc[j] += one + hib * np.int64(yr[i] != 0)
                hp[j] += v
            for ln in range(LANES):
                for j in range(k):
                    c = hc[ln * k + j]
                    part_c[u, j] += c & 0xFFFFFFFF
                    part_y[u, j] += c >> 32
                    part_p[u, j] += hp[ln * k + j]
        else:
            hc = np.zeros(LANES * k, np.int64)
            hy = np.zeros(LANES * k, sy_out.dtype)
            for i0 in range(0, m4, LANES):
                i = np.uintp(i0)
                for ln in range(LANES):
                    v = pr[i + np.uintp(ln)]
                    w = yr[i + np.uintp(ln)]
                    j = _hard_idx(np.float32(v), kf, kmax, lo, hi) + np.uintp(ln * k)
                    hc[j] += 1
                    hp[j] += v
                    hy[j] += w
            for i in range(m4, m):
                v = pr[i]
                j = _hard_idx(np.float32(v), kf, kmax, lo, hi)
                hc[j] += 1
                hp[j] += v
                hy[j] += yr[i]
            for ln in range(LANES):
                for j in range(k):
                    part_c[u, j] += hc[ln * k + j]
                    part_p[u, j] += hp[ln * k + j]
                    part_y[u, j] += hy[ln * k + j]
        bad[u, 0] = bp
        bad[u, 1] = by
    for u in range(units):
        r = u // nb
        for j in range(k):
            cnt_out[r, j] += part_c[u, j]
            sp_out[r, j] += part_p[u, j]
            sy_out[r, j] += part_y[u, j]
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


@njit(parallel=True, cache=True, nogil=True)
def soft_hist(p, y, inv_width, k, w_out, sp_out, sy_out, block):
    """Soft binning: each value splits unit weight between the two bins whose centres
    bracket it. Accumulates float64 ``w_out/sp_out/sy_out [R, K]``; returns the numbers of
    values of ``p`` and ``y`` outside [0, 1] or NaN.
    """
    r_rows, n = p.shape
    nb = (n + block - 1) // block
    units = r_rows * nb
    part_w = np.zeros((units, k), np.float64)
    part_p = np.zeros((units, k), np.float64)
    part_y = np.zeros((units, k), np.float64)
    bad = np.zeros((units, 2), np.int64)
    for u in prange(units):
        r = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        pr = p[r, s:e]
        yr = y[r, s:e]
        hw = np.zeros(2 * k, np.float64)
        hp = np.zeros(2 * k, np.float64)
        hy = np.zeros(2 * k, np.float64)
        bp = 0
        by = 0
        for i in range(e - s):
            ln = np.uintp((i & 1) * k)
            v = np.float64(pr[i])
            w = np.float64(yr[i])
            lo, hi, fr, _ = _soft_split(v, inv_width, k)
            a = 1.0 - fr
            lo += ln
            hi += ln
            hw[lo] += a
            hw[hi] += fr
            hp[lo] += a * v
            hp[hi] += fr * v
            hy[lo] += a * w
            hy[hi] += fr * w
            bp += _out_of_unit(v)
            by += _out_of_unit(w)
        for ln in range(2):
            for j in range(k):
                part_w[u, j] += hw[ln * k + j]
                part_p[u, j] += hp[ln * k + j]
                part_y[u, j] += hy[ln * k + j]
        bad[u, 0] = bp
        bad[u, 1] = by
    for u in range(units):
        r = u // nb
        for j in range(k):
            w_out[r, j] += part_w[u, j]
            sp_out[r, j] += part_p[u, j]
            sy_out[r, j] += part_y[u, j]
    return bad[:, 0].sum(), bad[:, 1].sum()


@njit(parallel=True, cache=True, nogil=True)
def hard_grad(p, lo, hi, g_sp, g_sy, gp, gy, want_y, block):
    """Backward of hard binned sums: ``gp[i] = g_sp[bin(i)]``, ``gy[i] = g_sy[bin(i)]``."""
    r_rows, n = p.shape
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    for u in prange(r_rows * nb):
        r = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        for i in range(s, e):
            j = _hard_idx(np.float32(p[r, i]), kf, kmax, lo, hi)
            gp[r, i] = g_sp[r, j]
            if want_y:
                gy[r, i] = g_sy[r, j]


@njit(parallel=True, cache=True, nogil=True)
def soft_grad(p, y, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, block):
    """Backward of soft binned sums (exact derivative of the two-neighbour split).

    With ``a = 1 - f``, ``f`` the upper-bin share and ``df/dp = inv_width`` inside the
    bracket (0 where the split is clamped):
    ``gp = a g_sp[lo] + f g_sp[hi] + df/dp ((g_w[hi] - g_w[lo]) + p (g_sp[hi] - g_sp[lo])
    + y (g_sy[hi] - g_sy[lo]))``; ``gy = a g_sy[lo] + f g_sy[hi]``.
    """
    r_rows, n = p.shape
    nb = (n + block - 1) // block
    for u in prange(r_rows * nb):
        r = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        for i in range(s, e):
            v = np.float64(p[r, i])
            w = np.float64(y[r, i])
            lo, hi, fr, inside = _soft_split(v, inv_width, k)
            a = 1.0 - fr
            d = inv_width if inside else 0.0
            gl = g_sp[r, lo]
            gh = g_sp[r, hi]
            gyl = g_sy[r, lo]
            gyh = g_sy[r, hi]
            gp[r, i] = (
                a * gl + fr * gh + d * ((g_w[r, hi] - g_w[r, lo]) + v * (gh - gl) + w * (gyh - gyl))
            )
            if want_y:
                gy[r, i] = a * gyl + fr * gyh


def run(fn, *args):
    """Call a parallel kernel (first argument ``p [R, N]``) with the torch thread count (one
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
