"""Benchmark of the binning kernel (not a test): layouts and dtypes, threads, cold start.

Default inputs are what users pass: the softmax of a network-like logit field (smooth random
field scaled so that most voxels are near 0 or 1) with one-hot targets built as in the README
(``one_hot(labels).movedim(-1, 1)``: a channel-last view) and contiguously, in every target
dtype, and predictions stored channel-last or in half precision; uniform random data is one row.
Every row gives the one-thread CPU time of ``calibseg.binning.compute_bin_stats`` (the stable
figure on a shared machine: ``time.thread_time`` of the calling thread) beside its wall time,
MONAI 1.6.1's ``calibration_binning`` on the same tensors, and the ratios to MONAI and to the
contiguous float32 row, all measured in this one run (min over repeats; our rows and MONAI's
are timed round-robin, so that a burst of load from other tenants falls on all of them alike).
The ratio to the contiguous row is given twice: of the minima, and paired (the median over
rounds of the row's time over the contiguous row's time in the same round, both taken seconds
apart: steadier on a loaded machine than minima taken at different moments).
Counts are checked against MONAI's on every row before timing. Then wall-time scaling over
``--threads`` (thread counts alternating), and the cold start (``calibseg --help``; first
kernel call in a fresh process).

Usage: python benchmarks/bench_binning.py [--quick] [--repeats 5] [--threads 1,2] [--memory]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _interleaved_times(
    fns: list, rounds: int, clock=time.thread_time, every: list[int] | None = None, prepare=None
) -> list[list[tuple[float, float] | None]]:
    """(CPU, wall) seconds of every call, ``[function][round]`` (None where a function was not
    called), timed round-robin (every round calls every function once, after one warm-up round):
    a burst of load from other tenants of the machine then falls on all rows alike instead of on
    one row's repeats. ``clock``: CPU time of the calling thread (one-thread runs: robust to
    other processes, and it does not count idle worker threads spinning) or
    ``time.process_time`` (all threads). ``every[i]``: call function ``i`` only in every
    ``every[i]``-th round (slow references); ``prepare[i]``: called untimed just before
    function ``i`` (e.g. to set the thread count)."""
    every = every or [1] * len(fns)
    prepare = prepare or [None] * len(fns)
    for pre, fn in zip(prepare, fns, strict=True):
        if pre is not None:
            pre()
        fn()
    times: list[list[tuple[float, float] | None]] = [[None] * rounds for _ in fns]
    for r in range(rounds):
        for i, fn in enumerate(fns):
            if r % every[i]:
                continue
            if prepare[i] is not None:
                prepare[i]()
            c, w = clock(), time.perf_counter()
            fn()
            times[i][r] = (clock() - c, time.perf_counter() - w)
    return times


def _fastest(samples: list, rounds: set[int] | None = None) -> tuple[float, float]:
    """(CPU, wall) minima of one function's samples (:func:`_interleaved_times`), over the
    given rounds only if ``rounds``."""
    kept = [t for r, t in enumerate(samples) if t is not None and (rounds is None or r in rounds)]
    return min(c for c, _ in kept), min(w for _, w in kept)


def _interleaved_min(
    fns: list, rounds: int, clock=time.thread_time, every: list[int] | None = None, prepare=None
) -> list[tuple[float, float]]:
    """(CPU, wall) seconds of the fastest call of each function (:func:`_interleaved_times`)."""
    return [_fastest(t) for t in _interleaved_times(fns, rounds, clock, every, prepare)]


def _inputs(shape) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.empty(shape).uniform_()
    y = torch.empty(shape).bernoulli_(0.5)
    return p, y


# Logit scale: 16 standard deviations of the box-filtered field (whose std is 1/27 inside the
# volume). Chosen so that the probabilities look like a trained network's, measured on the test
# predictions of the demo's trained SegResNetDS (baseline, 12 cases of 48x48x32x4): quantiles
# 1/10/25/50/75/90 % of log10 p of the classes other than the top one -31.1/-19.1/-13.7/-8.3/
# -4.5/-2.5 there, -26.9/-18.0/-13.2/-8.3/-4.3/-1.9 here ([1, 4, 128^3]). Max p > 0.9 in 93.5 %
# of its voxels, 85.5 % here; subnormal values 0.12 % there, 0.013 % here. (A scale of 40, used
# before, gave max p > 0.9 in 5 % of voxels: not network-like.)
LOGIT_SCALE = 16 * 27.0
LABEL_NOISE = 0.0125  # label disagreement noise, in field units (the labels used before)


def realistic(shape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of a smooth random logit field (box-filtered noise scaled by
    :data:`LOGIT_SCALE`: the confidence profile of a trained network, most values near 0 or 1,
    in large smooth regions) and labels drawn from it (argmax of the field plus noise)."""
    g = torch.Generator().manual_seed(seed)
    b, c, *sp = shape
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(sp)]
    field = pool(torch.randn(shape, generator=g), 9, 1, 4)
    labels = (field + LABEL_NOISE * torch.randn(shape, generator=g)).argmax(1)
    return (field * LOGIT_SCALE).softmax(1), labels


def confidence_profile(p: torch.Tensor, num_bins: int = 20) -> tuple[float, float, float]:
    """Fractions of voxels whose max probability exceeds 0.9, of values in the inner bins
    ``1 … num_bins - 2`` and of subnormal values, in probabilities ``[B, C, *spatial]``."""
    bins = (p * num_bins).long().clamp(max=num_bins - 1)
    inner = ((bins > 0) & (bins < num_bins - 1)).double().mean().item()
    sub = ((p > 0) & (p < torch.finfo(p.dtype).tiny)).double().mean().item()
    return (p.amax(1) > 0.9).double().mean().item(), inner, sub


def layout_rows(shape) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, y_pred, y) for every layout/dtype row; the first is the contiguous reference."""
    p, labels = realistic(shape)
    oh = F.one_hot(labels, shape[1]).movedim(-1, 1)  # channel-last int64 view (README)
    p_cl = p.movedim(1, -1).contiguous().movedim(-1, 1)
    rows = [
        ("softmax p, y one-hot float32 contiguous", p, oh.float().contiguous()),
        ("y one-hot float32 view (README)", p, oh.float()),
        ("y one-hot int64 view", p, oh),
        ("y one-hot uint8 view", p, oh.to(torch.uint8)),
        ("y one-hot bool view", p, oh.bool()),
        ("y one-hot float16 view", p, oh.half()),
        ("y one-hot bfloat16 view", p, oh.bfloat16()),
        ("y one-hot uint8 contiguous", p, oh.to(torch.uint8).contiguous()),
        ("p channel-last, y float32 view", p_cl, oh.float()),
        ("p float16, y float32 contiguous", p.half(), oh.float().contiguous()),
        ("p bfloat16 channel-last, y bool view", p_cl.bfloat16(), oh.bool()),
        ("p[:, 1:] (no background), y view", p[:, 1:], oh[:, 1:].float()),
    ]
    u, yb = _inputs(shape)
    rows.append(("uniform p, Bernoulli y (contiguous)", u, yb))
    return rows


def bench_layouts(shape, repeats: int) -> None:
    """The layout/dtype table: one-thread CPU time and wall time, ratios measured here."""
    from monai.metrics.calibration import calibration_binning

    from calibseg import binning as B

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(
        f"\ncompute_bin_stats on {list(shape)}, 20 bins, ONE thread: CPU time of the calling thread (thread_time,"
    )
    print(
        "stable on a shared machine) and wall time, ms; min over repeats, rows timed round-robin;"
    )
    every_monai = 4  # MONAI is 10-30x slower: timed in every 4th round only
    print(
        f"counts == MONAI's; MONAI timed in every {every_monai}th round (min of {repeats}); "
        "MONAI/ours compares"
    )
    print("it with our min over those same rounds, /contig uses all rounds; paired: median over")
    print("rounds of the row's CPU time / the contiguous row's in the same round")
    head = (
        f"{'input':<40}{'CPU':>7}{'wall':>7}{'MONAI CPU':>10}{'MONAI/ours':>11}{'/contig':>9}"
        f"{'paired':>8}"
    )
    rows = layout_rows(shape)
    conf, inner, sub = confidence_profile(rows[0][1])
    print(f"softmax p: max p > 0.9 in {conf:.1%} of voxels; {inner:.1%} of values in inner bins,")
    print(f"{sub:.3%} subnormal")
    try:
        monai_args, marks = [], []
        for name, p, y in rows:
            ours = B.compute_bin_stats(p, y)
            try:
                calibration_binning(p, y)
                my, mark = y, ""
            except (RuntimeError, TypeError):
                my, mark = y.float(), "*"  # MONAI rejects this dtype: given float32 targets
            m_counts = calibration_binning(p.float(), my.float())[2]
            if not torch.equal(ours.weight, m_counts.long()):
                raise SystemExit(f"counts differ from MONAI for {name}")
            monai_args.append((p, my))
            marks.append(mark)
        # ours and MONAI in one round-robin, so that both minima come from the same stretch of
        # time on a shared machine; the ratio to MONAI takes our minimum over the rounds MONAI
        # ran in (a minimum over more samples is lower: comparing more of ours would favour us)
        fns = [lambda p=p, y=y: B.compute_bin_stats(p, y) for _, p, y in rows]
        fns += [lambda p=p, my=my: calibration_binning(p, my) for p, my in monai_args]
        every = [1] * len(rows) + [every_monai] * len(rows)
        samples = _interleaved_times(fns, every_monai * repeats, every=every)
        ours_s, monai_s = samples[: len(rows)], samples[len(rows) :]
        print(head)
        base = _fastest(ours_s[0])[0]
        for (name, _, _), ours, monai, mark in zip(rows, ours_s, monai_s, marks, strict=True):
            cpu, wall = _fastest(ours)
            paired = _fastest(ours, {r for r, t in enumerate(monai) if t is not None})[0]
            m_cpu = _fastest(monai)[0]
            per_round = statistics.median(
                t[0] / b[0] for t, b in zip(ours, ours_s[0], strict=True) if t and b
            )
            print(
                f"{name:<40}{cpu * 1e3:>7.1f}{wall * 1e3:>7.1f}{m_cpu * 1e3:>9.0f}{mark:1}"
                f"{m_cpu / paired:>11.1f}{cpu / base:>9.2f}{per_round:>8.2f}"
            )
    finally:
        torch.set_num_threads(threads)
    print("* MONAI rejects these targets; it was given float32 copies (not timed for it)")


def bench_threads(shape, thread_list: list[int], repeats: int) -> None:
    """Wall time and total CPU time (all threads) of three rows for each thread count."""
    from calibseg import binning as B

    rows = layout_rows(shape)
    picks = [rows[0], rows[1], rows[3]]
    print(f"\nthread scaling on {list(shape)}: wall / CPU ms of the fastest call (CPU summed")
    print("over threads: equal CPU at more threads means no work is added by splitting it)")
    cols = "".join(f"{f'{t} thr wall/CPU':>18}" for t in thread_list)
    print(f"{'input':<40}{cols}{'speed-up':>10}")
    saved = torch.get_num_threads()
    try:
        for name, p, y in picks:
            # thread counts alternate within each round (the same load falls on each)
            fns = [lambda p=p, y=y: B.compute_bin_stats(p, y)] * len(thread_list)
            prepare = [lambda t=t: torch.set_num_threads(t) for t in thread_list]
            best = _interleaved_min(fns, 2 * repeats, time.process_time, prepare=prepare)
            times = [(wall, cpu) for cpu, wall in best]
            cells = "".join(f"{w * 1e3:>11.1f} /{c * 1e3:>5.1f}" for w, c in times)
            print(f"{name:<40}{cells}{times[0][0] / times[-1][0]:>10.2f}")
    finally:
        torch.set_num_threads(saved)


def bench_sums(shape, repeats: int) -> None:
    from calibseg import binning as B

    print(
        f"\nbinned_sums forward+backward on {list(shape)} (softmax p, one-hot view), wall ms, "
        f"min of {repeats}, interleaved"
    )
    print(f"{'mode':<8}{'ours':>9}{'reference':>11}{'ratio':>8}")
    p0, labels = realistic(shape)
    y = F.one_hot(labels, shape[1]).movedim(-1, 1).float()  # as in the README
    for soft in (False, True):

        def step(fn, soft=soft):
            p = p0.clone().requires_grad_()
            w, sp, sg = fn(p, y, 20, False, soft)
            (sp.sum() + sg.sum() + (w.sum() if soft else 0)).backward()

        # interleaved, the same number of calls each (wall time: both use torch's threads)
        fns = [
            lambda step=step: step(B.binned_sums),
            lambda step=step: step(B._binned_sums_reference),
        ]
        (_, ours), (_, ref) = _interleaved_min(fns, repeats, time.perf_counter)
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
    exe = os.path.join(os.path.dirname(sys.executable), "calibseg")
    helps = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - t)
    print(
        f"\ncold start: `calibseg --help` {min(helps):.2f} s (min of 3); fresh process, "
        f"[1,4,64,64,64]: import calibseg.binning {imp * 1e3:.0f} ms, first call "
        f"{first * 1e3:.0f} ms (numba import + cached kernel load), second {second * 1e3:.1f} ms"
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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads",
        default=f"1,{torch.get_num_threads()}",
        help="comma-separated thread counts for the scaling table (default: 1 and all)",
    )
    ap.add_argument("--memory", action="store_true", help="also the peak-memory tables")
    args = ap.parse_args()
    thread_list = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    shape = (1, 4, 64, 64, 64) if args.quick else (1, 4, 128, 128, 128)
    sums_shape = (2, 4, 48, 48, 48) if args.quick else (2, 4, 96, 96, 96)
    mem_shape = (1, 16, 128, 128, 64) if args.quick else (1, 16, 256, 256, 128)
    print(f"torch {torch.__version__}, threads {thread_list}, {os.cpu_count()} CPUs")
    bench_layouts(shape, args.repeats)
    bench_threads(shape, thread_list, args.repeats)
    torch.set_num_threads(max(thread_list))
    bench_sums(sums_shape, args.repeats)
    bench_cold(max(thread_list))
    if args.memory:
        bench_memory(mem_shape, max(thread_list))
        bench_sums_memory(sums_shape, max(thread_list))


if __name__ == "__main__":
    main()
