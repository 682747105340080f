"""Benchmark of the binning kernel (not a test): prints timings, ratios, cold start and memory.

Compares ``calibseg.binning.compute_bin_stats`` (numba path and torch path) with a
straightforward per-(b, c) loop, MONAI's ``calibration_binning`` and the floor (one
``torch.sum`` over the probabilities); times differentiable ``binned_sums`` forward+backward
against the plain-autograd torch reference; measures the first call in a fresh process and
the peak extra memory of a large input in a fresh process. Min over repeats (noisy machine).

Usage: python benchmarks/bench_binning.py [--quick] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch


def _min_time(fn, repeats: int) -> float:
    fn()  # warm-up (and kernel load)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _min_cpu_time(fn, repeats: int) -> float:
    """Min CPU time of the calling thread (one-thread runs: robust to other processes)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def loop_reference(y_pred: torch.Tensor, y: torch.Tensor, num_bins: int = 20):
    """Straightforward per-(image, class) loop: bucketize + bincount + scatter sums."""
    b, c = y_pred.shape[:2]
    upper = torch.linspace(0, 1 + torch.finfo(torch.float32).eps, num_bins + 1)[1:]
    p, g = y_pred.reshape(b, c, -1).float(), y.reshape(b, c, -1).double()
    counts = torch.zeros(b, c, num_bins, dtype=torch.int64)
    sp = torch.zeros(b, c, num_bins, dtype=torch.float64)
    sg = torch.zeros(b, c, num_bins, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            idx = torch.bucketize(p[i, j], upper).clamp_(max=num_bins - 1)
            counts[i, j] = torch.bincount(idx, minlength=num_bins)
            sp[i, j].index_add_(0, idx, p[i, j].double())
            sg[i, j].index_add_(0, idx, g[i, j])
    return counts, sp, sg


def _inputs(shape) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.empty(shape).uniform_()
    y = torch.empty(shape).bernoulli_(0.5)
    return p, y


def bench_stats(shapes, repeats: int) -> None:
    from monai.metrics.calibration import calibration_binning

    from calibseg import binning as B

    print("\ncompute_bin_stats (20 bins, float32 probabilities, binary float32 targets), ms")
    head = f"{'shape':<24}{'numba':>9}{'torch':>9}{'loop':>9}{'MONAI':>9}{'floor':>8}"
    print(head + f"{'MONAI/numba':>13}{'loop/numba':>12}{'numba/floor':>13}")
    for shape in shapes:
        p, y = _inputs(shape)
        ours = B.compute_bin_stats(p, y)
        m_counts = calibration_binning(p, y)[2]
        if not torch.equal(ours.weight, m_counts.long()):
            raise SystemExit(f"counts differ from MONAI for {shape}")
        t = {
            "numba": _min_time(lambda p=p, y=y: B.compute_bin_stats(p, y), 3 * repeats),
            "torch": _min_time(lambda p=p, y=y: B._compute_bin_stats_torch(p, y), repeats),
            "loop": _min_time(lambda p=p, y=y: loop_reference(p, y), max(3, repeats // 2)),
            "monai": _min_time(lambda p=p, y=y: calibration_binning(p, y), max(3, repeats // 2)),
            "floor": _min_time(lambda p=p: p.sum(), repeats),
        }
        ms = {k: v * 1e3 for k, v in t.items()}
        print(
            f"{str(list(shape)):<24}{ms['numba']:>9.1f}{ms['torch']:>9.1f}{ms['loop']:>9.1f}"
            f"{ms['monai']:>9.1f}{ms['floor']:>8.1f}{t['monai'] / t['numba']:>13.1f}"
            f"{t['loop'] / t['numba']:>12.1f}{t['numba'] / t['floor']:>13.1f}"
        )


def bench_stats_cpu(shape, repeats: int) -> None:
    """One thread, CPU time: the ratio to MONAI without the noise of a shared machine."""
    from monai.metrics.calibration import calibration_binning

    from calibseg import binning as B

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p, y = _inputs(shape)
        ours = _min_cpu_time(lambda: B.compute_bin_stats(p, y), 3 * repeats)
        monai = _min_cpu_time(lambda: calibration_binning(p, y), max(3, repeats // 2))
    finally:
        torch.set_num_threads(threads)
    print(
        f"one thread, CPU time on {list(shape)}: numba {ours * 1e3:.1f} ms, "
        f"MONAI {monai * 1e3:.1f} ms, MONAI/numba {monai / ours:.1f}"
    )


def bench_sums(shape, repeats: int) -> None:
    from calibseg import binning as B

    print(f"\nbinned_sums forward+backward on {list(shape)} (float32, 20 bins), ms")
    print(f"{'mode':<8}{'ours':>9}{'reference':>11}{'ratio':>8}")
    p0, y = _inputs(shape)
    for soft in (False, True):

        def step(fn, soft=soft):
            p = p0.clone().requires_grad_()
            w, sp, sg = fn(p, y, 20, False, soft)
            (sp.sum() + sg.sum() + (w.sum() if soft else 0)).backward()

        ours = _min_time(lambda step=step: step(B.binned_sums), 2 * repeats)
        ref = _min_time(lambda step=step: step(B._binned_sums_reference), max(3, repeats // 2))
        mode = "soft" if soft else "hard"
        print(f"{mode:<8}{ours * 1e3:>9.1f}{ref * 1e3:>11.1f}{ref / ours:>8.1f}")


_COLD = """
import time
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
t1 = time.perf_counter()
import calibseg.binning as B
t2 = time.perf_counter()
p = torch.rand(1, 4, 64, 64, 64); y = (torch.rand(1, 4, 64, 64, 64) < 0.5).float()
t3 = time.perf_counter(); B.compute_bin_stats(p, y); t4 = time.perf_counter()
B.compute_bin_stats(p, y); t5 = time.perf_counter()
print(f"{{t2 - t1:.3f}} {{t4 - t3:.3f}} {{t5 - t4:.4f}}")
"""


def bench_cold(threads: int) -> None:
    code = _COLD.format(threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imp, first, second = (float(v) for v in out.stdout.split())
    print(
        f"\ncold start (fresh process, [1,4,64,64,64]): import calibseg.binning {imp * 1e3:.0f} ms,"
        f" first call {first * 1e3:.0f} ms (numba import + cached kernel load), "
        f"second call {second * 1e3:.1f} ms"
    )


_MEM = """
import torch
torch.set_num_threads({threads})
import calibseg.binning as B


def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))


dtype = getattr(torch, "{dtype}")
B.compute_bin_stats(torch.rand(1, 1, 8), torch.ones(1, 1, 8))  # load kernels
p = torch.empty({shape}).uniform_().to(dtype)
y = torch.empty({shape}, dtype=torch.uint8).random_(0, 2)
fn = {fn}
fn(p[:, :1], y[:, :1])  # warm allocator caches
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
base = rss("VmRSS:")
fn(p, y)
print(rss("VmHWM:") - base, p.numel() * p.element_size())
"""


def bench_memory(shape, threads: int) -> None:
    print(f"\npeak extra memory on {list(shape)} (fresh process, VmHWM - VmRSS), uint8 targets")
    for dtype in ("float32", "float16"):
        for fn in ("B.compute_bin_stats", "B._compute_bin_stats_torch"):
            code = _MEM.format(threads=threads, shape=tuple(shape), dtype=dtype, fn=fn)
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            extra, size = (int(v) for v in res.stdout.split())
            name = "numba" if fn == "B.compute_bin_stats" else "torch"
            print(
                f"  {dtype:<8} {name:<6} extra {extra / 2**20:8.1f} MiB = "
                f"{extra / size:.3f} x the probability tensor ({size / 2**20:.0f} MiB)"
            )


_STEP = (
    "lambda p, y: (lambda o: (o[0].sum() + o[1].sum() + o[2].sum()).backward())"
    "(B.{fn}(p.float().requires_grad_(), y, 20, False, {soft}))"
)


def bench_sums_memory(shape, threads: int) -> None:
    print(f"\nbinned_sums forward+backward peak extra memory on {list(shape)} (float32, uint8 y)")
    for fn in ("binned_sums", "_binned_sums_reference"):
        for soft in (False, True):
            step = _STEP.format(fn=fn, soft=soft)
            code = _MEM.format(threads=threads, shape=tuple(shape), dtype="float32", fn=step)
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            extra, size = (int(v) for v in res.stdout.split())
            print(
                f"  {fn:<24}{'soft' if soft else 'hard':<6}{extra / 2**20:8.1f} MiB ="
                f" {extra / size:.2f} x the probability tensor"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    torch.manual_seed(0)
    if args.quick:
        shapes = [(1, 4, 64, 64, 64), (2, 3, 128, 128)]
        sums_shape, mem_shape = (2, 4, 48, 48, 48), (1, 16, 128, 128, 64)
    else:
        shapes = [(1, 4, 128, 128, 128), (2, 4, 96, 96, 96), (1, 1, 256, 256, 128)]
        sums_shape, mem_shape = (2, 4, 96, 96, 96), (1, 16, 256, 256, 128)
    print(f"torch {torch.__version__}, threads {args.threads}, min of {args.repeats} repeats")
    bench_stats(shapes, args.repeats)
    bench_stats_cpu(shapes[0], args.repeats)
    bench_sums(sums_shape, args.repeats)
    bench_cold(args.threads)
    bench_memory(mem_shape, args.threads)
    bench_sums_memory(sums_shape, args.threads)


if __name__ == "__main__":
    main()
