"""A process forked after the kernels ran on threads (DataLoader workers, forked pools) still
bins with the kernels."""

import multiprocessing as mp
import sys

import pytest
import torch

from calibseg import binning as B
from calibseg.binning import compute_bin_stats


def _child(q) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do
    p = torch.full((1, 2, 40_000), 0.35)
    y = torch.ones_like(p)
    q.put((int(compute_bin_stats(p, y, num_bins=10).weight[0, 0, 3]), B._kernels() is not None))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_after_kernel_call_does_not_hang() -> None:
    p = torch.rand(1, 2, 70_000)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compute_bin_stats(p, (p > 0.5).float())  # starts the kernel thread pool in the parent
    finally:
        torch.set_num_threads(saved)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q,))
    proc.start()
    proc.join(60)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive, "forked child hung in the binning kernel"
    assert proc.exitcode == 0
    assert q.get(timeout=5) == (40_000, True)
