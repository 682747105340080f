"""The kernels ask LLVM for 512-bit vectors (``_kernels.wide_vectors``): the request must reach
the compiled code, or the kernels silently fall back to LLVM's default width."""

from __future__ import annotations

import re

import numpy as np
import pytest

kern = pytest.importorskip("calibseg._kernels")
llvm = pytest.importorskip("llvmlite.binding")
from numba import njit  # noqa: E402


def _scale(a, out):
    kern.wide_vectors()
    for i in range(a.shape[0]):
        out[i] = a[i] * np.float32(2.0) + np.float32(1.0)


def test_the_attribute_reaches_the_llvm_function() -> None:
    f = njit(_scale)
    a = np.arange(64, dtype=np.float32)
    out = np.empty_like(a)
    f(a, out)
    np.testing.assert_array_equal(out, a * 2 + 1)
    (sig,) = f.signatures
    ir_text = f.inspect_llvm(sig)
    lines = ir_text.splitlines()
    # the function itself (not its Python or C wrappers); its attributes are inline or in a
    # group "#N" defined at the end of the module
    (define,) = [
        ln
        for ln in lines
        if ln.startswith("define") and "_scale" in ln and "cpython" not in ln and "@cfunc" not in ln
    ]
    groups = re.findall(r"#(\d+)", define.split(")")[-1])
    attrs = [ln for ln in lines if any(ln.startswith(f"attributes #{g} ") for g in groups)]
    assert kern._WIDE in define or any(kern._WIDE in ln for ln in attrs), (define, attrs)


@pytest.mark.skipif(
    "+avx512f" not in llvm.get_host_cpu_features().flatten(), reason="the CPU has no AVX-512"
)
def test_an_avx512_cpu_gets_512_bit_loops() -> None:
    f = njit(_scale)
    a = np.ones(256, dtype=np.float32)
    f(a, np.empty_like(a))
    asm = f.inspect_asm(f.signatures[0])
    assert "zmm" in asm
