"""Numba CPU kernels behind :mod:`calibseg.binning` (imported lazily, compiled once, cached on disk).

All kernels read ``[B, C, N]`` data (B images, C classes, N voxels) **of any strides** in
place, never copied. To keep the number of compiled specialisations small (each costs seconds
of compilation), every input reaches a kernel as a *source* of one fixed type (see
:func:`float_source`, :func:`half_source`, :func:`byte_source`): a 1-D contiguous view of the
tensor's storage with its element strides and a kind flag chosen at run time: float32/float64
values and one-byte targets (bool, uint8, int8) read as stored; float16/bfloat16 as their
16-bit patterns widened to float32 in integer arithmetic; wider integer targets as unsigned
integers of their width (a value other than 0 or 1 is read as 2 and counted as out of range).
The only compile-time choices left are the dtype of the probabilities (float32 or float64) and
the one the targets are read in (float32, float64 or uint8): at most six specialisations per
kernel. Contiguous voxel runs are sliced directly (vectorised loops), strided ones
staged into a small scratch tile in L1.

The kernels are serial, GIL-free numba functions over a range of units of (image, block of
voxels); :func:`run` spreads the units over a thread pool of this process (torch's thread
count; one thread for small inputs). Serial kernels compile about three times faster than
``parallel=True`` ones and start no OpenMP pool, so a forked child (a DataLoader worker) runs
them too. Each unit visits its voxels in spans and, inside a span, every class before moving
on, so a channel-last tensor is read in its memory order (all classes of a voxel from the same
cache lines) and a channel-first one row by row; channel-last predictions with channel-last
targets are binned in that order without staging (:func:`hard_hist_narrow`). Each unit fills
its own histograms, which are summed at the end (no atomics, no shared writes).

Hard binning gives indices equal to ``torch.bucketize`` on float32 values bit for bit. Up to
``NARROW_BINS`` bins, the bin is ``floor(p K)`` computed in loops over tiles of ``TILE``
voxels; values close enough to an inner edge for the guess to be off are flagged and redone
exactly, and targets are read as one-byte codes (:func:`_code`) whatever their dtype. More
bins use a branch-free bucketize per voxel: the guess corrected by ±1 with comparisons against
the exact float32 edges. Units keep interleaved sub-histograms so that consecutive voxels in the
same bin do not serialise on one slot.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# numba caches compiled kernels next to this file (__pycache__); when the source tree is
# read-only it falls back to a user cache dir. Make that dir explicit and writable.
if not os.environ.get("NUMBA_CACHE_DIR") and not os.access(os.path.dirname(__file__), os.W_OK):
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        os.path.expanduser("~"), ".cache", "calibseg", "numba"
    )

import torch  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402

LANES = 4
LANES2 = 8  # sub-histograms of the narrow hard kernel (breaks same-bin update chains)
assert LANES2 == 8, "the update loops read the slots of one step as one 8-byte word"
TILE = 4096  # voxels of one class handled at once (bins, codes, staging): 1-7 % faster than
# 2048 on every layout row (fewer tiles: less fixed cost per tile; 2048 beat 512 and 1024),
# and a tile's probabilities, codes and slots (24 KiB) still fit a 32 KiB L1; 8192 would not
NARROW_BINS = 64  # at most this many bins: the narrow hard kernel (slots 2 bin + y < 128)
FLAGS8 = np.uint64(0x8080808080808080)  # bit 7 of 8 slots (values near an edge)
TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32
TAU = 2.0**-10  # largest distance to an edge (in bins) that gets an exact bucketize
BLOCK = 1 << 16  # values (voxels × classes) per parallel unit
SMALL = 1 << 15  # values below which a kernel runs on one thread
_LOCK = threading.Lock()
LOW_HALF = 0 if sys.byteorder == "little" else 1  # the 32-bit half of a uint64 holding its low bits

# kinds of source (a run-time flag, not a compile-time type)
DIRECT, FLOAT16, WIDE, BFLOAT16 = 0, 1, 2, 3
_HALF_KINDS = {"float16": FLOAT16, "bfloat16": BFLOAT16}
_NONE = {dt: np.zeros(0, dt) for dt in (np.float32, np.float64, np.uint16, np.uint8)}


def float_source(values: np.ndarray, strides: tuple[int, int, int]) -> tuple:
    """A kernel source of float32/float64 values: ``values`` a 1-D contiguous array whose
    element ``b sb + c sc + i sn`` is the value at ``[b, c, i]`` (strides in elements)."""
    return (values, _NONE[np.uint16], _NONE[np.uint8], DIRECT, 1, *strides)


def half_source(bits: np.ndarray, kind: str, strides: tuple[int, int, int]) -> tuple:
    """A kernel source of float16/bfloat16 values given as 16-bit patterns (1-D uint16
    ``bits``, strides in elements); ``kind`` is ``"float16"`` or ``"bfloat16"``."""
    return (_NONE[np.float32], bits, _NONE[np.uint8], _HALF_KINDS[kind], 2, *strides)


def byte_source(data: np.ndarray, itemsize: int, strides: tuple[int, int, int]) -> tuple:
    """A kernel source of bool or integer values: ``data`` the 1-D uint8 bytes of the storage
    (a whole number of elements), ``itemsize`` the bytes per element (1, 2, 4 or 8),
    ``strides`` in elements. One-byte values are read as stored (uint8); wider ones as unsigned
    integers of their width, a value above 1 (including any negative one) becoming 2, outside
    [0, 1], so that it is counted as a bad value without a separate range pass."""
    nh = _NONE[np.uint16]
    if itemsize == 1:
        return (data, nh, _NONE[np.uint8], DIRECT, 1, *strides)
    return (_NONE[np.uint8], nh, data, WIDE, itemsize, *strides)


def dest(values: np.ndarray, strides: tuple[int, int, int]) -> tuple:
    """A kernel destination (gradients): 1-D contiguous ``values``, strides in elements."""
    return (values, *strides)


def no_dest(dtype) -> tuple:
    """An unused destination of ``dtype`` (float32/float64)."""
    return (_NONE[np.dtype(dtype).type], 0, 0, 0)


def bits(a):
    """The bit patterns of a 1-D float32/float64/uint8 array as unsigned integers (a view)."""
    raise NotImplementedError  # compiled form only (see the overload below)


def one_bits(a):
    """The bit pattern of 1 in the dtype of ``a`` (as returned by :func:`bits`)."""
    raise NotImplementedError


def nonzero_or_one(r, one):
    """``r`` if not 0 else ``one``: the minimum of it over a tile is the smallest non-zero
    pattern (1 for one-byte targets, where no value lies strictly between 0 and 1)."""
    raise NotImplementedError


@overload(nonzero_or_one, inline="always")
def _nonzero_or_one_impl(r, one):
    if isinstance(r, types.Integer) and r.bitwidth == 8:
        return lambda r, one: one
    return lambda r, one: r if r != 0 else one


@overload(bits, inline="always")
def _bits_impl(a):
    if a.dtype == types.float32:
        return lambda a: a.view(np.uint32)
    if a.dtype == types.float64:
        return lambda a: a.view(np.uint64)
    return lambda a: a


@overload(one_bits, inline="always")
def _one_bits_impl(a):
    if a.dtype == types.float32:
        return lambda a: np.uint32(0x3F800000)
    if a.dtype == types.float64:
        return lambda a: np.uint64(0x3FF0000000000000)
    return lambda a: np.uint8(1)


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint the CPU to load the cache line of ``arr[i]`` (never faults, no result)."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        consts = [ir.Constant(i32, v) for v in (0, 3, 1)]
        builder.call(fn, [builder.bitcast(ptr, i8p), *consts])
        return context.get_dummy_value()

    return sig, codegen


# The vectoriser's width, as an LLVM function attribute. LLVM's tuning for Intel server cores
# (Skylake-SP to Emerald Rapids) prefers 256-bit vectors even where 512-bit ones exist; numba
# offers no per-function switch, and a process-wide one (NUMBA_CPU_FEATURES) would change every
# other numba function of the user's process too.
_WIDE = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers where the CPU has them
    (AVX-512; no effect elsewhere). The loops compute the same values at any width (no
    reassociation). Measured on one AVX-512 machine (Emerald Rapids): hard binning 1.12-1.17x
    faster on most inputs (1.03-1.04x with channel-last predictions), soft 1.02-1.13x, identical
    sums (docs/benchmarks.md)."""

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        if isinstance(attrs, set):  # llvmlite validates names against a fixed list: bypassed
            set.add(attrs, _WIDE)
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _as_float32(typingctx, u):
    """The float32 whose bit pattern is the uint32 ``u``."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def widened8(typingctx, arr, i):
    """``arr[i : i + 8]`` (1-D float32 or float64, unit stride, in bounds: not checked) as a
    tuple of eight float64: one unaligned vector load, widened exactly, where eight scalar
    loads would compete with the histogram updates for the CPU's load ports. Typed only for
    1-D C-contiguous arrays (a compile error otherwise, never a wrong read)."""
    floats = (types.float32, types.float64)
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"):
        return None
    if arr.dtype not in floats or not isinstance(i, types.Integer):
        return None
    sig = types.UniTuple(types.float64, 8)(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        elt = ptr.type.pointee
        wide = isinstance(elt, ir.DoubleType)
        vptr = builder.bitcast(ptr, ir.VectorType(elt, 8).as_pointer())
        vec = builder.load(vptr, align=8 if wide else 4)
        if not wide:
            vec = builder.fpext(vec, ir.VectorType(ir.DoubleType(), 8))
        vals = [builder.extract_element(vec, ir.Constant(ir.IntType(32), k)) for k in range(8)]
        return context.make_tuple(builder, signature.return_type, vals)

    return sig, codegen


@njit(inline="always")
def bf16_to_f32(x):
    """The float32 value of a bfloat16 bit pattern ``x`` (shifted into the high half)."""
    return _as_float32(np.uint32(np.uint32(x) << np.uint32(16)))


@intrinsic
def f16_to_f32(typingctx, x):
    """The float32 value of a float16 bit pattern ``x`` (uint16): LLVM's exact half-to-float
    extension (one vector instruction on CPUs with F16C)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(inline="always")
def aligned_empty(rows, cols, dtype):
    """An uninitialised C-contiguous ``[rows, cols]`` array starting on a 64-byte boundary (a
    cache line; numba's own arrays start on 32 bytes). The kernels' scratch: their vectorised
    loops load and store 64-byte vectors, and one straddling two cache lines costs two
    accesses (staging channel-last data into rows starting 32 bytes off a line took twice
    as long as into aligned ones, docs/benchmarks.md)."""
    buf = np.empty(rows * cols + 64, dtype)
    off = ((-buf.ctypes.data) & 63) // buf.itemsize
    return buf[off : off + rows * cols].reshape((rows, cols))


@njit(inline="always")
def next_tile(src, b, c, t0, packed):
    """Element offset, in a source's array, of the memory its next tile will read: the same
    class's next ``TILE`` voxels, or for channel-last data staged by :func:`fill_rows` the
    ``c``-th ``TILE`` elements of the next span."""
    sb, sc, sn = src[-3], src[-2], src[-1]
    if packed:
        return b * sb + (t0 + TILE) * sn + c * TILE
    return b * sb + c * sc + (t0 + TILE) * sn


@njit(inline="always")
def source_bytes(src):
    """``(bytes, itemsize)``: the array a source reads, as a uint8 view, and the bytes of one
    of its elements (taken out of the source once per kernel: reading arrays out of a tuple in
    a hot loop costs reference counting)."""
    f, h, u, kind, width = src[0], src[1], src[2], src[3], src[4]
    if kind == DIRECT:
        return f.view(np.uint8), f.itemsize
    if kind == WIDE:
        return u, width
    return h.view(np.uint8), 2


@njit(inline="always")
def ahead_step(data, o, width, i0):
    """In a loop over values ``i0 = 0, LANES2, 2 LANES2 …`` of the current tile: prefetch
    element ``o + i0`` of the next tile (``width`` bytes per element; ``o`` from
    :func:`ahead_start`, so in bounds). One prefetch per step, without a test: a line may be
    asked for twice, which costs less than the branch that skipped it."""
    _prefetch(data, (o + i0) * width)


@njit(inline="always")
def ahead_start(data, width, o, tn):
    """Element offset ``o`` of the next tile (:func:`next_tile`) moved back, if need be, so that
    its ``tn`` elements lie inside ``data`` (bytes of ``width``-byte elements; the current tile
    of ``tn`` elements does)."""
    last = data.shape[0] // width - tn
    return o if o < last else last


@njit(inline="always")
def _as_stored(v, arg):
    """The value itself (a conversion for :func:`_strided` and :func:`_rows`)."""
    return v


@njit(inline="always")
def _two_above_one(v, arg):
    """An integer value, above 1 read as 2 (the conversion of wide integer targets)."""
    return v if v <= 1 else 2


@njit(inline="always")
def _from_f16(v, arg):
    """The float32 value of a float16 pattern (a conversion)."""
    return f16_to_f32(v)


@njit(inline="always")
def _from_bf16(v, arg):
    """The float32 value of a bfloat16 pattern (a conversion)."""
    return bf16_to_f32(v)


@njit(inline="always")
def _strided(a, o, sn, tn, out, conv, arg):
    """``out[i] = conv(a[o + i sn], arg)`` for ``i < tn`` (vectorised where ``sn`` is the
    constant 1 at the call site)."""
    for i in range(tn):
        out[i] = conv(a[np.uintp(o + i * sn)], arg)


@njit(inline="always")
def _widen(h, o, sn, tn, out, bf):
    """``out[i]`` = the float32 value of the half-precision pattern ``h[o + i sn]`` for
    ``i < tn``: bfloat16 if ``bf``, else float16."""
    if bf:
        _strided(h, o, sn, tn, out, _from_bf16, 0)
    else:
        _strided(h, o, sn, tn, out, _from_f16, 0)


@njit(inline="always")
def stage(src, b, c, t0, tn, scratch):
    """Values ``[b, c, t0 : t0 + tn]`` of a source as a contiguous 1-D array: a slice of the
    source itself when it holds floats with unit voxel stride, else ``scratch[:tn]`` filled
    with them by :func:`gather` (a call, so that each kernel inlines only the fast path)."""
    f = src[0]
    sb, sc, sn = src[-3], src[-2], src[-1]
    o = b * sb + c * sc + t0 * sn
    if src[3] == DIRECT and sn == 1:
        return f[o : o + tn]
    gather(src, o, tn, scratch)
    return scratch[:tn]


@njit(nogil=True)
def gather(src, o, tn, scratch):
    """Fill ``scratch[:tn]`` with the values of a source from element ``o`` on (strided values
    read as stored, half patterns widened by :func:`_widen`, multi-byte integers)."""
    wide_vectors()
    f, h, u, kind, width, sb, sc, sn = src
    if kind == DIRECT:
        _strided(f, o, sn, tn, scratch, _as_stored, 0)
    elif kind != WIDE:
        if sn == 1:  # unit stride seen by the compiler: vectorised
            _widen(h[o : o + tn], 0, 1, tn, scratch, kind == BFLOAT16)
        else:
            _widen(h, o, sn, tn, scratch, kind == BFLOAT16)
    elif width == 2:
        _strided(u.view(np.uint16), o, sn, tn, scratch, _two_above_one, 0)
    elif width == 4:
        _strided(u.view(np.uint32), o, sn, tn, scratch, _two_above_one, 0)
    else:
        _strided(u.view(np.uint64), o, sn, tn, scratch, _two_above_one, 0)


@njit(inline="always")
def _rows(blk, rows, tn, nc, conv, arg):
    """``rows[c, i] = conv(blk[i nc + c], arg)`` for ``i < tn``; ``nc`` a constant at each call
    site, so that the loop is vectorised as an interleaved load."""
    for i in range(tn):
        for c in range(nc):
            rows[c, i] = conv(blk[i * nc + c], arg)


@njit(inline="always")
def _rows_small(blk, rows, tn, conv, arg):
    """:func:`_rows` for 2, 3 or 4 classes (each count its own vectorised loop: more would
    cost compile time for class counts rarely met; others are read class by class)."""
    nc = rows.shape[0]
    if nc == 2:
        _rows(blk, rows, tn, 2, conv, arg)
    elif nc == 3:
        _rows(blk, rows, tn, 3, conv, arg)
    else:
        _rows(blk, rows, tn, 4, conv, arg)


@njit(inline="always")
def _packed_start(src, b, t0, tn, rows):
    """Element offset of ``[b, 0, t0]`` when a source is stored channel-last (class stride 1,
    voxel stride = number of classes) with as many classes as ``rows`` (2 to 4) and ``tn``
    fits in ``rows``; -1 otherwise (the source is then read class by class)."""
    sb, sc, sn = src[-3], src[-2], src[-1]
    nc = rows.shape[0]
    if sc != 1 or sn != nc or nc < 2 or nc > 4 or tn > rows.shape[1]:
        return -1
    return b * sb + t0 * sn


@njit(nogil=True)
def fill_rows(src, b, t0, tn, rows):
    """Stage ``[b, :, t0 : t0 + tn]`` of a source stored channel-last (class stride 1, voxel
    stride = number of classes, 2 to 4 classes, ``tn <= TILE``) into ``rows[:, :tn]`` in one
    pass over its memory (an interleaved load, vectorised; half-precision patterns widened in
    the same pass). False, nothing done, for any other layout or
    for 2- and 4-byte integers (those are read class by class by :func:`stage`)."""
    wide_vectors()
    f, h, u, kind, width = src[0], src[1], src[2], src[3], src[4]
    nc = rows.shape[0]
    o = _packed_start(src, b, t0, tn, rows)
    if o < 0:
        return False
    m = tn * nc
    if kind == DIRECT:
        _rows_small(f[o : o + m], rows, tn, _as_stored, 0)
    elif kind == WIDE:
        if width != 8:
            return False
        _rows_small(u.view(np.uint64)[o : o + m], rows, tn, _two_above_one, 0)
    elif kind == BFLOAT16:
        _rows_small(h[o : o + m], rows, tn, _from_bf16, 0)
    else:
        _rows_small(h[o : o + m], rows, tn, _from_f16, 0)
    return True


def codes_of(a, o, tn, scratch):
    """Target codes (:func:`_code`) of ``a[o : o + tn]`` (1-D, unit stride): one-byte data as
    stored (0, 1, or a larger value: bad), floats converted into ``scratch``."""
    raise NotImplementedError


@overload(codes_of, inline="always")
def _codes_of_impl(a, o, tn, scratch):
    if isinstance(a.dtype, types.Integer) and a.dtype.bitwidth == 8:
        return lambda a, o, tn, scratch: a[o : o + tn]

    def impl(a, o, tn, scratch):
        _float_codes(a, o, tn, scratch)
        return scratch[:tn]

    return impl


@njit(nogil=True)
def _float_codes(a, o, tn, scratch):
    """``scratch[:tn]`` = codes of the floats ``a[o : o + tn]`` (a call: the kernels inline
    only their hot loops, which keeps their compile time down)."""
    wide_vectors()
    _strided(bits(a[o : o + tn]), 0, 1, tn, scratch, _code, one_bits(a))


@njit(inline="always")
def half_one(kind):
    """The bit pattern of 1 in float16 or bfloat16 (``kind``)."""
    return np.uint16(0x3C00) if kind == FLOAT16 else np.uint16(0x3F80)


@njit(inline="always")
def _code(v, one):
    """Target code of a bit pattern ``v``: 0 for +0, 1 for ``one`` (the pattern of 1), 2 for
    anything else (non-binary, out of range, NaN, -0.0: the tile is then read exactly)."""
    nz = v != 0
    return np.uint8(nz) + np.uint8(nz & (v != one))


@njit(nogil=True)
def gather_codes(src, o, tn, scratch):
    """``scratch[:tn]`` = the codes (:func:`_code`) of a source's values from element ``o``."""
    wide_vectors()
    _codes_into(src, o, tn, src[-1], scratch)


@njit(inline="always")
def _codes_into(src, o, n, sn, scratch):
    """``scratch[:n]`` = the codes (:func:`_code`) of a source's elements ``o + i sn`` (every
    kind; ``sn`` the constant 1 at a call site makes the loops vectorised)."""
    f, h, u, kind, width = src[0], src[1], src[2], src[3], src[4]
    if kind == DIRECT:
        _strided(bits(f), o, sn, n, scratch, _code, one_bits(f))
    elif kind != WIDE:
        _strided(h, o, sn, n, scratch, _code, half_one(kind))
    elif width == 2:
        _strided(u.view(np.uint16), o, sn, n, scratch, _code, np.uint16(1))
    elif width == 4:
        _strided(u.view(np.uint32), o, sn, n, scratch, _code, np.uint32(1))
    elif sn == 1:
        _halves_codes(u.view(np.uint32), o, n, scratch)
    else:
        _strided(u.view(np.uint64), o, sn, n, scratch, _code, np.uint64(1))


@njit(inline="always")
def _halves_codes(w, o, n, scratch):
    """``scratch[:n]`` = the codes (:func:`_code`) of the 8-byte integers ``o … o + n``, read
    as their two 32-bit halves ``w`` (a uint32 view): 0 when both are 0, 1 for the value 1, 2
    for anything else. Vectorises in 32-bit lanes, where 64-bit comparisons and their packing
    to bytes cost about a fifth more per value (docs/benchmarks.md)."""
    for i in range(n):
        q = np.uintp(2) * np.uintp(o + i)
        lo = w[q + np.uintp(LOW_HALF)]
        hi = w[q + np.uintp(1 - LOW_HALF)]
        nz = (lo | hi) != np.uint32(0)
        big = (hi != np.uint32(0)) | (lo > np.uint32(1))
        scratch[i] = np.uint8(nz) + np.uint8(big)


@njit(inline="always")
def stage_codes(src, b, c, t0, tn, scratch):
    """Codes of ``[b, c, t0 : t0 + tn]`` of a target source (uint8 ``[tn]``): one-byte data
    with unit voxel stride as stored, else converted into ``scratch``."""
    f = src[0]
    sb, sc, sn = src[-3], src[-2], src[-1]
    o = b * sb + c * sc + t0 * sn
    if src[3] == DIRECT and sn == 1:
        return codes_of(f, o, tn, scratch)
    gather_codes(src, o, tn, scratch)
    return scratch[:tn]


@njit(nogil=True)
def fill_code_rows(src, b, t0, tn, rows, scratch):
    """:func:`fill_rows` for targets: the codes (uint8 ``rows``) of channel-last data of 2 to 4
    classes, computed in memory order by :func:`run_codes` (elementwise; one-byte data as
    stored, anything else into ``scratch``, ``[tn C]`` uint8), then dealt out to the rows (a
    byte de-interleave): cheaper than de-interleaving the wider values themselves
    (docs/benchmarks.md). False, nothing done, for other layouts."""
    wide_vectors()
    nc = rows.shape[0]
    o = _packed_start(src, b, t0, tn, rows)
    if o < 0:
        return False
    _rows_small(run_codes(src, o, tn * nc, scratch), rows, tn, _as_stored, 0)
    return True


@njit(nogil=True)
def target_values(src, b, c, t0, tn, out):
    """``out[:tn]`` = the targets ``[b, c, t0 : t0 + tn]`` as float64 (multi-byte integers
    above 1 as 2), read from the source itself by :func:`gather`: for a tile whose checks
    failed."""
    sb, sc, sn = src[-3], src[-2], src[-1]
    gather(src, b * sb + c * sc + t0 * sn, tn, out)


@njit(inline="always")
def interleaved_pair(p, y, nc, span):
    """True when predictions and targets are both stored channel-last with the same 2 to 4
    classes (class stride 1, voxel stride ``nc``) and visited in spans of one tile:
    :func:`hard_hist_narrow` then bins them in memory order, unstaged (half-precision
    predictions widened by the slot loop, :func:`half_slots`; targets coded by
    :func:`run_codes`)."""
    packed = (p[-2] == 1) & (p[-1] == nc) & (y[-2] == 1) & (y[-1] == nc)
    return packed & (nc >= 2) & (nc <= 4) & (span == TILE)


@njit(nogil=True)
def run_codes(src, o, m, scratch):
    """Target codes (:func:`_code`) of elements ``o … o + m`` of a source's array (memory
    order): one-byte data as stored; floats, half patterns and wider integers converted into
    ``scratch``."""
    wide_vectors()
    if src[3] == DIRECT:
        return codes_of(src[0], o, m, scratch)
    _codes_into(src, o, m, 1, scratch)
    return scratch[:m]


@njit(inline="always")
def store(dst, b, c, t0, tn, vals):
    """Write ``vals[:tn]`` to ``[b, c, t0 : t0 + tn]`` of a destination."""
    f, sb, sc, sn = dst
    o = b * sb + c * sc + t0 * sn
    if sn == 1:
        for i in range(tn):
            f[np.uintp(o + i)] = vals[i]
    else:
        for i in range(tn):
            f[np.uintp(o + i * sn)] = vals[i]


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
    x = (v32 if v32 > TINY else TINY) * kf  # subnormals (slow to multiply) and NaN: bin 0
    x = x if x < kmax else kmax
    g = np.uintp(x)
    return g - np.uintp(v32 <= lo[g]) + np.uintp(v32 > hi[g])


@njit(inline="always")
def _guess(v, kf, tau):
    """``(floor(v K) clamped to [0, K - 1], near)`` for float32 ``v`` (branch-free,
    vectorisable); ``near`` when ``v K`` lies within ``tau`` of an inner edge index
    ``1 … K - 1`` (the nearest integer, by ``rint``), where the guess may differ from the bin.
    Subnormal ``v`` is taken as the smallest normal number (same bin, without the slow
    multiply); NaN gives bin 0."""
    x = (v if v > TINY else TINY) * kf
    x = x if x < kf else kf
    gi = np.int32(x)
    n = np.rint(x)
    near = (np.abs(x - n) < tau) & (n >= np.float32(1.0)) & (n < kf)
    km1 = np.int32(kf - np.float32(1.0))
    return (gi if gi < km1 else km1), near


def block_voxels(n_classes: int) -> int:
    """Voxels per parallel unit: about :data:`BLOCK` values, a multiple of :data:`TILE`."""
    return max(TILE, (BLOCK // max(n_classes, 1)) // TILE * TILE)


def _partials(dims, k: int, block: int, wdtype) -> tuple:
    """Per-unit histograms ``[units, C, K]`` (weight, sum_p, sum_y) and bad counts ``[units, 2]``."""
    nb = (dims[2] + block - 1) // block
    units = dims[0] * nb
    return (
        np.zeros((units, dims[1], k), wdtype),
        np.zeros((units, dims[1], k), np.float64),
        np.zeros((units, dims[1], k), np.float64),
        np.zeros((units, 2), np.int64),
    )


def _reduce(parts: tuple, dims, w_out, sp_out, sy_out) -> tuple[int, int]:
    """Add the per-unit histograms to the ``[B, C, K]`` outputs; the bad-value counts."""
    pw, pp, py, bad = parts
    shape = (dims[0], -1, *pw.shape[1:])
    w_out += pw.reshape(shape).sum(1)
    sp_out += pp.reshape(shape).sum(1)
    sy_out += py.reshape(shape).sum(1)
    return int(bad[:, 0].sum()), int(bad[:, 1].sum())


def hard_hist(dims, p, y, lo, hi, cnt_out, sp_out, sy_out, span) -> tuple[int, int]:
    """Accumulate hard-binning counts and sums of sources ``p, y`` of shape ``dims = (B, C, N)``
    into ``cnt_out`` (int64), ``sp_out`` and ``sy_out`` (float64), ``[B, C, K]``. ``lo``/``hi``:
    :func:`hard_edges`; ``span``: voxels of one class visited before the next class
    (:data:`TILE` for channel-last data).

    Returns the numbers of values of ``p`` and of ``y`` outside [0, 1] or NaN.
    """
    block = block_voxels(dims[1])
    k = lo.shape[0]
    parts = _partials(dims, k, block, np.int64)
    if k > NARROW_BINS:
        run(hard_hist_wide, dims, block, p, y, lo, hi, *parts, block)
    else:
        tau = guess_tolerance(hi)
        run(hard_hist_narrow, dims, block, p, y, lo, hi, *parts, block, span, tau)
    return _reduce(parts, dims, cnt_out, sp_out, sy_out)


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


@njit(inline="always")
def _checks_start(pt, yt):
    """Start the bit-pattern checks of a tile: ``(pb, yb, onep, oney, mxp, mxy, mny)``, the
    patterns of ``pt`` and ``yt``, the pattern of 1 in each, and the running largest pattern of
    each and smallest non-zero pattern of ``yt`` (see :func:`_checks_add`)."""
    pb = bits(pt)
    yb = bits(yt)
    oney = one_bits(yt)
    return pb, yb, one_bits(pt), oney, pb[0], yb[0], oney


@njit(inline="always")
def _checks_add(q, r, mxp, mxy, mny, oney):
    """Add one value's patterns ``q`` (probability) and ``r`` (target) to the running checks."""
    rz = nonzero_or_one(r, oney)
    return (q if q > mxp else mxp), (r if r > mxy else mxy), (rz if rz < mny else mny)


@njit(inline="always")
def _checks_failed(mxp, mxy, mny, onep, oney):
    """True when a tile may hold a probability or target outside [0, 1] (or NaN, or -0.0) or a
    target other than 0 and 1: its values are then counted exactly (:func:`exact_counts`)."""
    return (mxp > onep) | (mxy > oney) | (mny < oney)


@njit(nogil=True)
def exact_counts(pt, yt, tn):
    """Numbers of values of ``pt[:tn]`` and of ``yt[:tn]`` outside [0, 1] or NaN, and of
    targets other than 0 and 1 (for a tile whose bit-pattern checks failed)."""
    wide_vectors()
    bp = 0
    by = 0
    nonbin = 0
    for i in range(tn):
        v = pt[i]
        w = yt[i]
        bp += np.int64((v < 0) | (v > 1) | (v != v))
        by += np.int64((w < 0) | (w > 1) | (w != w))
        nonbin += np.int64((w != 0) & (w != 1))
    return bp, by, nonbin


@njit(nogil=True)
def exact_slots(pt, idx, tn, lo, hi, every):
    """Exact bins (``torch.bucketize`` semantics, :func:`_hard_idx`) in the slots ``idx[:tn]``
    of the values ``pt`` (see :func:`hard_hist_narrow`): of every value if ``every``, else of
    the values flagged by bit 7 (near an edge), whose flag is cleared."""
    wide_vectors()
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    if every:
        for i in range(tn):
            g = _hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)
            idx[i] = np.uint8(2 * g) + (idx[i] & np.uint8(1))
        return
    iw = idx.view(np.uint64)  # 8 slots at a time: flags are rare
    for w in range((tn + 7) // 8):
        if iw[w] & FLAGS8:
            for i in range(8 * w, min(8 * w + 8, tn)):
                if idx[i] & np.uint8(128):
                    g = _hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)
                    idx[i] = np.uint8(2 * g) + (idx[i] & np.uint8(1))


@njit(inline="always")
def _slot_loop(pv, pb, one, conv, yt, idx, n, kf, tau, out, keep):
    """``idx[i] = 2 bin + (code & 1)`` of the prediction ``conv(pv[i])`` (float32) and the code
    ``yt[i]`` for ``i < n`` (bin guessed by :func:`_guess`, bit 7 set near an edge), vectorised;
    the float32 values also written to ``out`` if ``keep`` (a constant at each call site).
    ``pb``: the bit patterns of ``pv``, ``one`` that of 1. Returns ``(failed, near)``: whether
    a check failed (a pattern above that of 1: outside [0, 1], negative or NaN; a code above 1)
    and whether any value lies near an edge."""
    mxp = pb[0]
    mxy = yt[0]
    near = False
    for i in range(n):
        q = pb[i]
        r = yt[i]
        mxp = q if q > mxp else mxp
        mxy = r if r > mxy else mxy
        v = np.float32(conv(pv[i], 0))
        if keep:
            out[i] = v
        g, nr = _guess(v, kf, tau)
        near = near | nr
        nbit = np.uint8(nr) << np.uint8(7)  # flags a value near an edge
        idx[i] = np.uint8(g + g) + (r & np.uint8(1)) | nbit
    return (mxp > one) | (mxy > 1), near


@njit(inline="always")
def _slots(pt, yt, idx, n, kf, tau):
    """:func:`_slot_loop` of float32/float64 predictions ``pt`` read in place."""
    return _slot_loop(pt, bits(pt), one_bits(pt), _as_stored, yt, idx, n, kf, tau, pt, False)


@njit(nogil=True)
def half_slots(h, kind, yt, idx, n, kf, tau, out):
    """:func:`_slot_loop` of half-precision patterns ``h[:n]`` (``kind``: FLOAT16 or
    BFLOAT16), widened in the loop itself and written to ``out[:n]`` (float32) for the
    updates: no separate staging pass."""
    wide_vectors()
    one = half_one(kind)
    if kind == BFLOAT16:
        return _slot_loop(h, h, one, _from_bf16, yt, idx, n, kf, tau, out, True)
    return _slot_loop(h, h, one, _from_f16, yt, idx, n, kf, tau, out, True)


@njit(inline="always")
def _lane_slot(w, ln):
    """Element ``LANES2 slot + ln`` of slot-major sub-histograms for the slot in byte ``ln`` of
    ``w`` (the slots of ``LANES2`` consecutive values read as one little-endian word)."""
    return np.uintp((w >> np.uint64(8 * ln)) & np.uint64(255)) * np.uintp(LANES2) + np.uintp(ln)


@njit(inline="always")
def _add_lanes(u, hw, hp, hy, part_w, part_p, part_y):
    """Add a unit's slot-major sub-histograms (``hw`` weights or counts, ``hp`` probability
    sums, ``[C, LANES2 2 K]``; slots ``2 j`` and ``2 j + 1`` hold bin ``j`` with target 0 and 1)
    to its partials ``[u, C, K]``, lane by lane; the target sums are the odd slots' weights plus
    ``hy [C, K]`` (non-binary targets)."""
    for c in range(hw.shape[0]):
        for ln in range(LANES2):
            for j in range(hy.shape[1]):
                a = 2 * j * LANES2 + ln
                part_w[u, c, j] += hw[c, a] + hw[c, a + LANES2]
                part_y[u, c, j] += hw[c, a + LANES2]
                part_p[u, c, j] += hp[c, a] + hp[c, a + LANES2]
        for j in range(hy.shape[1]):
            part_y[u, c, j] += hy[c, j]


@njit(inline="always")
def _scatter(idx, pt, hcc, hpc, n, nc, ahead):
    """Add 1 and ``pt[nc i]`` to slot ``idx[nc i]`` of sub-histogram ``i % LANES2`` of one
    class (``hcc``, ``hpc``: slot-major, element ``LANES2 slot + lane``) for ``i < n``.
    ``nc`` (1: rows, 2 to 4: memory order of channel-last data) is a constant at each call
    site, so that the stride is an address offset. With unit stride, each step reads its eight
    slots as one word and its eight values as one vector (:func:`widened8`): three loads
    instead of sixteen beside the updates' sixteen (docs/benchmarks.md). ``ahead``: the next
    tile's prefetch (:func:`ahead_step` arguments)."""
    pbyt, op, pw, ybyt, oy, yw = ahead
    lanes = np.uintp(LANES2)
    tq = (n // LANES2) * LANES2
    if nc == 1:
        words = idx.view(np.uint64)  # LANES2 == 8 slots per word, little-endian
        for i0 in range(0, tq, LANES2):
            ahead_step(pbyt, op, pw, i0)
            ahead_step(ybyt, oy, yw, i0)
            w = words[i0 >> 3]
            v = widened8(pt, i0)
            for ln in range(LANES2):
                j = _lane_slot(w, ln)
                hcc[j] += 1
                hpc[j] += v[ln]
    else:
        for i0 in range(0, tq, LANES2):
            ahead_step(pbyt, op, pw, i0)
            ahead_step(ybyt, oy, yw, i0)
            for ln in range(LANES2):
                q = np.uintp(nc) * np.uintp(i0 + ln)
                j = np.uintp(idx[q]) * lanes + np.uintp(ln)
                hcc[j] += 1
                hpc[j] += pt[q]
    for i in range(tq, n):
        q = np.uintp(nc) * np.uintp(i)
        j = np.uintp(idx[q]) * lanes
        hcc[j] += 1
        hpc[j] += pt[q]


@njit(inline="always")
def _scatter_classes(idx, pt, hc, hp, n, p, y, b, s0, pbyt, pw, ybyt, yw):
    """:func:`_scatter` of every class of a channel-last span of ``n`` voxels binned in memory
    order (slots ``idx`` and values ``pt`` of ``n × C`` elements), prefetching the next span."""
    nc = hc.shape[0]
    for c in range(nc):
        op = ahead_start(pbyt, pw, next_tile(p, b, c, s0, True), n)
        oy = ahead_start(ybyt, yw, next_tile(y, b, c, s0, True), n)
        ahead = (pbyt, op, pw, ybyt, oy, yw)
        if nc == 2:
            _scatter(idx[c:], pt[c:], hc[c], hp[c], n, 2, ahead)
        elif nc == 3:
            _scatter(idx[c:], pt[c:], hc[c], hp[c], n, 3, ahead)
        else:
            _scatter(idx[c:], pt[c:], hc[c], hp[c], n, 4, ahead)


@njit(cache=True, nogil=True)
def hard_hist_narrow(u0, u1, dims, p, y, lo, hi, part_c, part_p, part_y, bad, block, span, tau):
    """:func:`hard_hist` for up to :data:`NARROW_BINS` bins, one pass over the data.

    Per tile of ``TILE`` voxels of one class, probabilities are read in place (staged
    contiguously in L1 when strided; half-precision ones with unit voxel stride widened by the
    slot loop itself, :func:`half_slots`) and targets as one-byte codes
    (:func:`_code`: 0, 1, or 2 for anything else; one-byte targets as stored). One vectorised
    loop computes ``2 * bin + (code & 1)`` into a uint8 scratch, the bin as ``floor(p K)``
    (subnormal ``p`` taken as the smallest normal number: same bin, no slow multiply), bit 7
    set where ``p K`` lies within ``tau`` of an inner edge, and checks the tile with two
    reductions: the largest bit pattern of ``p`` (above the pattern of 1: outside [0, 1],
    negative or NaN) and the largest code. A tile that fails a check is counted exactly from
    its values read again (bad values; non-binary targets added separately); flagged values get
    exact bins (``torch.bucketize`` semantics). A scalar loop then adds 1 and ``p`` to
    ``2 LANES2 K`` slots (``LANES2`` interleaved sub-histograms, voxel ``i`` in ``i % LANES2``:
    runs of voxels in one bin, the common case of confident predictions, do not serialise on
    one slot; stored slot-major, so that a lane is a constant offset), from which counts,
    target sums and probability sums are read.

    Predictions and targets both stored channel-last with 2 to 4 classes
    (:func:`interleaved_pair`) are not staged: the slots of a span's values are computed in
    memory order (all classes at once, elementwise), and each class's updates read its slots
    and values with a constant stride. A span that fails a check goes through the staged rows.
    Each value lands in the same sub-histogram in the same order either way (identical sums).
    """
    wide_vectors()
    n_img, n_cls, n = dims
    k = lo.shape[0]
    k2 = 2 * k
    kf = np.float32(k)
    pbyt, pw = source_bytes(p)
    ybyt, yw = source_bytes(y)
    nb = (n + block - 1) // block
    mem = interleaved_pair(p, y, n_cls, span)
    mn = n_cls * TILE if mem else 1
    half = p[3] != DIRECT
    for u in range(u0, u1):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        hc = np.zeros((n_cls, LANES2 * k2), np.int64)
        hp = np.zeros((n_cls, LANES2 * k2), np.float64)
        hy = np.zeros((n_cls, k), np.float64)
        idx = aligned_empty(1, TILE, np.uint8)[0]
        ps = aligned_empty(n_cls, TILE, p[0].dtype)
        ys = aligned_empty(n_cls, TILE, np.uint8)
        yv = aligned_empty(1, TILE, np.float64)[0]
        ym = aligned_empty(1, min(n_cls, 4) * TILE, np.uint8)[0]  # codes in memory order
        im = aligned_empty(1, mn, np.uint8)[0]
        pm = aligned_empty(1, mn if half else 1, p[0].dtype)[0]
        bp = 0
        by = 0
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            if mem:  # channel-last p and y: slots in memory order, strided updates, no staging
                m = (e0 - s0) * n_cls
                o = b * p[-3] + s0 * n_cls
                yc = run_codes(y, b * y[-3] + s0 * n_cls, m, ym)
                if half:  # widened by the slot loop into pm
                    pv = pm[:m]
                    failed, near = half_slots(p[1][o : o + m], p[3], yc, im, m, kf, tau, pv)
                else:
                    pv = p[0][o : o + m]
                    failed, near = _slots(pv, yc, im, m, kf, tau)
                if not failed:
                    if tau == 0 or near:
                        exact_slots(pv, im, m, lo, hi, tau == 0)
                    _scatter_classes(im, pv, hc, hp, e0 - s0, p, y, b, s0, pbyt, pw, ybyt, yw)
                    continue
                # a check failed: the span is read again through the staged rows below
            pk = fill_rows(p, b, s0, e0 - s0, ps)
            yk = fill_code_rows(y, b, s0, e0 - s0, ys, ym)
            for c in range(n_cls):
                hcc = hc[c]
                hpc = hp[c]
                hyc = hy[c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    tn = t1 - t0
                    yt = ys[c, :tn] if yk else stage_codes(y, b, c, t0, tn, ys[0])
                    if half and not pk and p[-1] == 1:  # widened by the slot loop
                        oh = b * p[-3] + c * p[-2] + t0
                        pt = ps[0, :tn]
                        failed, near = half_slots(
                            p[1][oh : oh + tn], p[3], yt, idx, tn, kf, tau, pt
                        )
                    else:
                        pt = ps[c, :tn] if pk else stage(p, b, c, t0, tn, ps[0])
                        failed, near = _slots(pt, yt, idx, tn, kf, tau)
                    nonbin = 0
                    if failed:  # exact counts, this tile
                        target_values(y, b, c, t0, tn, yv)
                        cp, cy, nonbin = exact_counts(pt, yv, tn)
                        bp += cp
                        by += cy
                    if tau == 0 or near:
                        exact_slots(pt, idx, tn, lo, hi, tau == 0)
                    op = ahead_start(pbyt, pw, next_tile(p, b, c, t0, pk), tn)
                    oy = ahead_start(ybyt, yw, next_tile(y, b, c, t0, yk), tn)
                    _scatter(idx, pt, hcc, hpc, tn, 1, (pbyt, op, pw, ybyt, oy, yw))
                    if nonbin:  # the targets themselves, minus the (code & 1) counted in hc
                        for i in range(tn):
                            j = np.uintp(idx[i] >> 1)
                            hyc[j] += yv[i]
                            hyc[j] -= idx[i] & 1
        _add_lanes(u, hc, hp, hy, part_c, part_p, part_y)
        bad[u, 0] = bp
        bad[u, 1] = by


@njit(cache=True, nogil=True)
def hard_hist_wide(u0, u1, dims, p, y, lo, hi, part_c, part_p, part_y, bad, block):
    """:func:`hard_hist` for more than :data:`NARROW_BINS` bins (bucketize by guess + gather),
    class by class within a block (one histogram of ``LANES K`` slots at a time).

    Count and positive targets share one int64 per bin (count in the low 32 bits, ``y != 0``
    in the high 32 bits: one update instead of two); tiles with non-binary targets add
    ``y - (y != 0)`` to a separate target sum. Returns the numbers of values of ``p`` and of
    ``y`` outside [0, 1] or NaN.
    """
    wide_vectors()
    n_img, n_cls, n = dims
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    one = np.int64(1)
    hib = np.int64(1 << 32)
    for u in range(u0, u1):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        bp = 0
        by = 0
        hc = np.zeros(LANES * k, np.int64)
        hp = np.zeros(LANES * k, np.float64)
        hy = np.zeros(k, np.float64)
        ps = aligned_empty(1, TILE, p[0].dtype)[0]
        ys = aligned_empty(1, TILE, y[0].dtype)[0]
        for c in range(n_cls):
            hc[:] = 0
            hp[:] = 0.0
            hy[:] = 0
            for t0 in range(s, e, TILE):
                t1 = min(t0 + TILE, e)
                m = t1 - t0
                pt = stage(p, b, c, t0, m, ps)
                yt = stage(y, b, c, t0, m, ys)
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
                        hy[j] -= np.float64(w != 0)
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


@njit(inline="always")
def _soft_split(v, inv_width, k):
    """``(lower bin, upper bin, upper-bin share, inside)`` of float64 ``v``, branch-free (the
    lower bin is ``floor(v K - 1/2)`` clamped to ``[0, K - 2]``, computed as the truncation of
    the clamped value: equal, and vectorisable); ``inside`` where the share's derivative is
    non-zero (not clamped)."""
    t = v * inv_width - 0.5
    top = np.float64(k - 2) if k > 1 else 0.0
    tc = t if t > 0.0 else 0.0  # also maps NaN to 0
    tc = tc if tc < top else top
    lo = np.int32(tc)
    d = t - np.float64(lo)
    inside = (d >= 0.0) & (d <= 1.0) & (k > 1)
    fr = d if d > 0.0 else 0.0
    fr = fr if fr < 1.0 else 1.0
    fr = fr if k > 1 else 0.0
    hi = lo + np.int32(1) if k > 1 else lo
    return lo, hi, fr, inside


def soft_hist(dims, p, y, inv_width, k, w_out, sp_out, sy_out, span) -> tuple[int, int]:
    """Soft binning of sources ``p, y`` (shape ``dims``): each value splits unit weight between
    the two bins whose centres bracket it. Accumulates float64 ``w_out/sp_out/sy_out
    [B, C, K]``; returns the numbers of values of ``p`` and ``y`` outside [0, 1] or NaN.
    """
    block = block_voxels(dims[1])
    parts = _partials(dims, k, block, np.float64)
    run(soft_hist_kernel, dims, block, p, y, inv_width, k, *parts, block, span)
    return _reduce(parts, dims, w_out, sp_out, sy_out)


@njit(cache=True, nogil=True)
def soft_hist_kernel(u0, u1, dims, p, y, inv_width, k, part_w, part_p, part_y, bad, block, span):
    """:func:`soft_hist` by (image, block of voxels) units.

    Per tile, a vectorised loop computes each value's lower bin and upper-bin share (float64)
    and ``2 * lower bin + (y != 0)``, with the bit-pattern checks of :func:`hard_hist_narrow`;
    a scalar loop then adds the two shares and the shares times ``p`` to ``LANES2``
    interleaved sub-histograms of ``2 K`` slots (slot-major, read as in :func:`_scatter`),
    whose odd slots give the target sums of binary targets. Tiles with non-binary targets add
    their targets separately.
    """
    wide_vectors()
    n_img, n_cls, n = dims
    k2 = 2 * k
    step = np.uintp(2) if k > 1 else np.uintp(0)  # slot of the upper bin, from the lower
    lanes = np.uintp(LANES2)
    up = step * lanes  # the same in the slot-major sub-histograms
    pbyt, pw = source_bytes(p)
    ybyt, yw = source_bytes(y)
    nb = (n + block - 1) // block
    for u in range(u0, u1):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        hw = np.zeros((n_cls, LANES2 * k2), np.float64)
        hp = np.zeros((n_cls, LANES2 * k2), np.float64)
        hy = np.zeros((n_cls, k), np.float64)
        idx = aligned_empty(1, TILE, np.uint8)[0]
        words = idx.view(np.uint64)  # LANES2 == 8 slots per word, little-endian
        frs = aligned_empty(1, TILE, np.float64)[0]
        ps = aligned_empty(n_cls, TILE, p[0].dtype)
        ys = aligned_empty(n_cls, TILE, y[0].dtype)
        bp = 0
        by = 0
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            pk = fill_rows(p, b, s0, e0 - s0, ps)
            yk = fill_rows(y, b, s0, e0 - s0, ys)
            for c in range(n_cls):
                hwc = hw[c]
                hpc = hp[c]
                hyc = hy[c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    tn = t1 - t0
                    pt = ps[c, :tn] if pk else stage(p, b, c, t0, tn, ps[0])
                    yt = ys[c, :tn] if yk else stage(y, b, c, t0, tn, ys[0])
                    pb, yb, onep, oney, mxp, mxy, mny = _checks_start(pt, yt)
                    for i in range(tn):
                        mxp, mxy, mny = _checks_add(pb[i], yb[i], mxp, mxy, mny, oney)
                        lo, _, fr, _ = _soft_split(np.float64(pt[i]), inv_width, k)
                        frs[i] = fr
                        idx[i] = np.uint8(lo + lo) + np.uint8(yt[i] != 0)
                    nonbin = 0
                    if _checks_failed(mxp, mxy, mny, onep, oney):  # exact counts, this tile
                        cp, cy, nonbin = exact_counts(pt, yt, tn)
                        bp += cp
                        by += cy
                    op = ahead_start(pbyt, pw, next_tile(p, b, c, t0, pk), tn)
                    oy = ahead_start(ybyt, yw, next_tile(y, b, c, t0, yk), tn)
                    tq = (tn // LANES2) * LANES2
                    for i0 in range(0, tq, LANES2):
                        ahead_step(pbyt, op, pw, i0)
                        ahead_step(ybyt, oy, yw, i0)
                        w = words[i0 >> 3]
                        frv = widened8(frs, i0)
                        pv = widened8(pt, i0)
                        for ln in range(LANES2):
                            j = _lane_slot(w, ln)
                            fr = frv[ln]
                            a = 1.0 - fr
                            v = pv[ln]
                            hwc[j] += a
                            hwc[j + up] += fr
                            hpc[j] += a * v
                            hpc[j + up] += fr * v
                    for i in range(tq, tn):
                        j = np.uintp(idx[i]) * lanes
                        fr = frs[i]
                        a = 1.0 - fr
                        v = np.float64(pt[i])
                        hwc[j] += a
                        hwc[j + up] += fr
                        hpc[j] += a * v
                        hpc[j + up] += fr * v
                    if nonbin:  # the targets themselves, minus the (y != 0) counted in hw
                        for i in range(tn):
                            lo = np.uintp(idx[i] >> 1)
                            fr = frs[i]
                            d = np.float64(yt[i]) - np.float64(idx[i] & 1)
                            hyc[lo] += (1.0 - fr) * d
                            hyc[lo + (step >> 1)] += fr * d
        _add_lanes(u, hw, hp, hy, part_w, part_p, part_y)
        bad[u, 0] = bp
        bad[u, 1] = by


def hard_grad(dims, p, lo, hi, g_sp, g_sy, gp, gy, want_y, span):
    """Backward of hard binned sums for a source ``p`` of shape ``dims``: writes
    ``gp[i] = g_sp[bin(i)]`` and (if ``want_y``) ``gy[i] = g_sy[bin(i)]`` to the destinations
    ``gp``, ``gy`` (tables ``[B, C, K]`` float64)."""
    block = block_voxels(dims[1])
    tau = guess_tolerance(hi) if lo.shape[0] <= NARROW_BINS else np.float32(0.0)
    args = (p, lo, hi, g_sp, g_sy, gp, gy, want_y, block, span, tau)
    run(hard_grad_kernel, dims, block, *args)


@njit(cache=True, nogil=True)
def hard_grad_kernel(u0, u1, dims, p, lo, hi, g_sp, g_sy, gp, gy, want_y, block, span, tau):
    """:func:`hard_grad` by (image, block of voxels) units: per tile, the bins by the guess of
    :func:`hard_hist_narrow` (exact bucketize for a tile with a value near an edge, or every
    tile when ``tau`` is 0), then table lookups."""
    wide_vectors()
    n_img, n_cls, n = dims
    k = lo.shape[0]
    kf = np.float32(k)
    kmax = np.float32(k - 1)
    nb = (n + block - 1) // block
    for u in range(u0, u1):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        ps = aligned_empty(n_cls, TILE, p[0].dtype)
        gs = aligned_empty(1, TILE, gp[0].dtype)[0]
        gys = aligned_empty(1, TILE, gp[0].dtype)[0]
        idx = aligned_empty(1, TILE, np.int32)[0]
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            pk = fill_rows(p, b, s0, e0 - s0, ps)
            for c in range(n_cls):
                tsp = g_sp[b, c]
                tsy = g_sy[b, c]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    tn = t1 - t0
                    pt = ps[c, :tn] if pk else stage(p, b, c, t0, tn, ps[0])
                    near = False
                    for i in range(tn):
                        g, nr = _guess(np.float32(pt[i]), kf, tau)
                        near = near | nr
                        idx[i] = g
                    if tau == 0 or near:
                        for i in range(tn):
                            idx[i] = _hard_idx(np.float32(pt[i]), kf, kmax, lo, hi)
                    for i in range(tn):
                        gs[i] = tsp[idx[i]]
                    store(gp, b, c, t0, tn, gs)
                    if want_y:
                        for i in range(tn):
                            gys[i] = tsy[idx[i]]
                        store(gy, b, c, t0, tn, gys)


def soft_grad(dims, p, y, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, span):
    """Backward of soft binned sums (exact derivative of the two-neighbour split) for sources
    ``p, y`` of shape ``dims``, tables ``g_* [B, C, K]`` float64, destinations ``gp, gy``.

    With ``a = 1 - f``, ``f`` the upper-bin share and ``df/dp = inv_width`` inside the
    bracket (0 where the split is clamped):
    ``gp = a g_sp[lo] + f g_sp[hi] + df/dp ((g_w[hi] - g_w[lo]) + p (g_sp[hi] - g_sp[lo])
    + y (g_sy[hi] - g_sy[lo]))``; ``gy = a g_sy[lo] + f g_sy[hi]``.
    """
    block = block_voxels(dims[1])
    args = (p, y, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, block, span)
    run(soft_grad_kernel, dims, block, *args)


@njit(cache=True, nogil=True)
def soft_grad_kernel(
    u0, u1, dims, p, y, inv_width, k, g_w, g_sp, g_sy, gp, gy, want_y, block, span
):
    """:func:`soft_grad` by (image, block of voxels) units. Per (image, class), tables by
    lower bin ``lo`` of ``g_sp[lo]``, ``g_sp[hi] - g_sp[lo]``, ``g_w[hi] - g_w[lo]``,
    ``g_sy[lo]`` and ``g_sy[hi] - g_sy[lo]`` turn each value's gradient into four lookups."""
    wide_vectors()
    n_img, n_cls, n = dims
    nb = (n + block - 1) // block
    tab = np.zeros((5, k), np.float64)
    for u in range(u0, u1):
        b = u // nb
        s = (u % nb) * block
        e = min(s + block, n)
        ps = aligned_empty(n_cls, TILE, p[0].dtype)
        ys = aligned_empty(n_cls, TILE, y[0].dtype)
        gs = aligned_empty(1, TILE, gp[0].dtype)[0]
        gys = aligned_empty(1, TILE, gp[0].dtype)[0]
        los = aligned_empty(1, TILE, np.int32)[0]
        frs = aligned_empty(1, TILE, np.float64)[0]
        dds = aligned_empty(1, TILE, np.float64)[0]
        for s0 in range(s, e, span):
            e0 = min(s0 + span, e)
            pk = fill_rows(p, b, s0, e0 - s0, ps)
            yk = fill_rows(y, b, s0, e0 - s0, ys)
            for c in range(n_cls):
                tw = g_w[b, c]
                tsp = g_sp[b, c]
                tsy = g_sy[b, c]
                for j in range(k):
                    h = j + 1 if j + 1 < k else j
                    tab[0, j] = tsp[j]
                    tab[1, j] = tsp[h] - tsp[j]
                    tab[2, j] = tw[h] - tw[j]
                    tab[3, j] = tsy[j]
                    tab[4, j] = tsy[h] - tsy[j]
                t_p, t_dp, t_dw, t_y, t_dy = tab[0], tab[1], tab[2], tab[3], tab[4]
                for t0 in range(s0, e0, TILE):
                    t1 = min(t0 + TILE, e0)
                    tn = t1 - t0
                    pt = ps[c, :tn] if pk else stage(p, b, c, t0, tn, ps[0])
                    yt = ys[c, :tn] if yk else stage(y, b, c, t0, tn, ys[0])
                    for i in range(tn):  # vectorised: the split of every value
                        lo, _, fr, inside = _soft_split(np.float64(pt[i]), inv_width, k)
                        los[i] = lo
                        frs[i] = fr
                        dds[i] = inv_width if inside else 0.0
                    for i in range(tn):  # table lookups (scalar)
                        lo = los[i]
                        v = np.float64(pt[i])
                        fr = frs[i]
                        dp = t_dp[lo]
                        gs[i] = t_p[lo] + fr * dp + dds[i] * (t_dw[lo] + v * dp + yt[i] * t_dy[lo])
                        gys[i] = t_y[lo] + fr * t_dy[lo]
                    store(gp, b, c, t0, tn, gs)
                    if want_y:
                        store(gy, b, c, t0, tn, gys)


def threads_for(size: int) -> int:
    """Threads for a kernel over ``size`` values: torch's thread count, or one below
    :data:`SMALL` values (where waking threads costs more than it saves)."""
    return 1 if size < SMALL else max(1, torch.get_num_threads())


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads owned by this process (a forked child makes its own)."""
    global _POOL
    with _LOCK:
        pid = os.getpid()
        if _POOL is None or _POOL[0] != pid or _POOL[1] < n:
            if _POOL is not None and _POOL[0] == pid:
                _POOL[2].shutdown(wait=False)
            _POOL = (pid, n, ThreadPoolExecutor(n, thread_name_prefix="calibseg-kernel"))
        return _POOL[2]


def run(fn, dims, block: int, *args) -> None:
    """Call ``fn(u0, u1, dims, *args)`` over the units ``[0, B ceil(N / block))`` of data of
    shape ``dims = (B, C, N)``: in the calling thread for one thread (:func:`threads_for`),
    else in chunks on a thread pool (the kernels release the GIL).
    """
    units = dims[0] * ((dims[2] + block - 1) // block)
    n = min(threads_for(dims[0] * dims[1] * dims[2]), units)
    if n <= 1:
        fn(0, units, dims, *args)
        return
    chunks = min(units, 4 * n)  # a few chunks per thread: balance on a shared machine
    bounds = [units * i // chunks for i in range(chunks + 1)]
    pool = _pool(n)
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], dims, *args) for i in range(chunks)]
    for f in futures:
        f.result()
