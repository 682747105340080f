"""The kernels' scratch arrays start on a cache line (``_kernels.aligned_empty``): numba's own
arrays start on 32 bytes, and a 64-byte vector store into them straddles two lines."""

from __future__ import annotations

import numpy as np
import pytest

kern = pytest.importorskip("calibseg._kernels")
from numba import njit  # noqa: E402


@njit
def _addresses(rows, cols, like):
    out = np.empty((40, 2), np.int64)
    keep = []
    for i in range(40):
        # interleave other allocations so that the heap does not hand back one address
        keep.append(np.empty(1 + 7 * i, np.uint8))
        a = kern.aligned_empty(rows, cols + i, like.dtype)
        a[:] = 1
        out[i, 0] = a.ctypes.data % 64
        out[i, 1] = a.sum() == rows * (cols + i)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 4])
def test_every_array_starts_on_a_cache_line_and_is_usable(dtype, rows) -> None:
    # the kernels' own sizes: 4 float64 rows of a tile exceed glibc's default mmap threshold
    got = _addresses(rows, kern.TILE, np.zeros(1, dtype))
    assert (got[:, 0] == 0).all(), got[:, 0]
    assert got[:, 1].all()


def test_shape_dtype_and_layout() -> None:
    @njit
    def make(like):
        return kern.aligned_empty(3, 100, like.dtype)

    a = make(np.zeros(1, np.float32))
    assert a.shape == (3, 100) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.ctypes.data % 64 == 0
