"""Speed and peak memory of the mL1-ACE losses (forward + backward, softmax excluded), and the
cost of the ACE term in a real training step (``--train-step``).

Compares calibseg's HardL1ACELoss / SoftL1ACELoss with straightforward per-(image, class)
loop references (the mL1-ACE paper's hard loss; a soft loss written the way MONAI's
development-branch soft binning is: one bin assignment and scatter per image and class), the
bare binning kernel (``calibseg.binning.binned_sums``) and a floor (``|p - t|.mean()``: one read
of the inputs forward, one gradient write backward).

Run: ``.venv/bin/python benchmarks/bench_losses.py [--shape 2 4 96 96 96] [--repeats 5]
[--train-step]``. Targets are one-hot views built as in the README (channel-last).
Peak memory is the growth of the process's resident set (Linux ``VmHWM`` after resetting it)
during one forward + backward, on top of the live inputs; glibc's mmap threshold is pinned so
freed blocks are returned to the system.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # make large frees visible to RSS
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

from calibseg.binning import binned_sums  # noqa: E402
from calibseg.losses import HardL1ACELoss, SoftL1ACELoss  # noqa: E402

EPS32 = float(torch.finfo(torch.float32).eps)


def loop_hard_ace(p: torch.Tensor, t: torch.Tensor, num_bins: int = 20) -> torch.Tensor:
    """Per-(b, c) hard mL1-ACE as in the paper's code: bucketize + scatter_add per image/class."""
    b, c = p.shape[:2]
    upper = torch.linspace(0.0, 1.0 + EPS32, num_bins + 1)[1:]
    out = []
    for i in range(b):
        for j in range(c):
            pv, tv = p[i, j].flatten(), t[i, j].flatten()
            idx = torch.bucketize(pv.detach(), upper).clamp(max=num_bins - 1)
            cnt = torch.zeros(num_bins).scatter_add(0, idx, torch.ones_like(pv))
            sp = torch.zeros(num_bins).scatter_add(0, idx, pv)
            sg = torch.zeros(num_bins).scatter_add(0, idx, tv)
            nonempty = cnt > 0
            gap = (sp[nonempty] - sg[nonempty]).abs() / cnt[nonempty]
            out.append(gap.mean())
    return torch.stack(out).mean()


def loop_soft_ace(
    p: torch.Tensor, t: torch.Tensor, num_bins: int = 20, empty_weight: float = 0.01
) -> torch.Tensor:
    """Per-(b, c) soft mL1-ACE, straightforward: neighbour bins + linear weights + scatter_add."""
    b, c = p.shape[:2]
    width = (1.0 + EPS32) / num_bins
    out = []
    for i in range(b):
        for j in range(c):
            pv, tv = p[i, j].flatten(), t[i, j].flatten()
            pos = pv / width - 0.5
            lo = torch.floor(pos.detach()).clamp(0, num_bins - 2)
            w_hi = (pos - lo).clamp(0, 1)
            w_lo = 1 - w_hi
            lo = lo.long()
            hi = lo + 1
            cnt = torch.zeros(num_bins).scatter_add(0, lo, w_lo).scatter_add(0, hi, w_hi)
            sp = torch.zeros(num_bins).scatter_add(0, lo, w_lo * pv).scatter_add(0, hi, w_hi * pv)
            sg = torch.zeros(num_bins).scatter_add(0, lo, w_lo * tv).scatter_add(0, hi, w_hi * tv)
            nonempty = cnt >= empty_weight
            gap = (sp[nonempty] - sg[nonempty]).abs() / cnt[nonempty]
            out.append(gap.mean())
    return torch.stack(out).mean()


def kernel_only(soft: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def fn(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w, sp, sg = binned_sums(p, t, 20, soft=soft)
        return sp.sum() + sg.sum()

    return fn


def floor(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t).abs().mean()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_mib(fn: Callable, p: torch.Tensor, t: torch.Tensor) -> float:
    """Resident-set growth (MiB) during one forward + backward; NaN where /proc is unavailable."""
    try:
        p.grad = None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kb("VmRSS")
        fn(p, t).backward()
        return (_rss_kb("VmHWM") - before) / 1024
    except OSError:
        return float("nan")


def time_ms(fn: Callable, p: torch.Tensor, t: torch.Tensor, repeats: int) -> float:
    """Median wall time (ms) of forward + backward."""
    p.grad = None
    fn(p, t).backward()  # warm-up (numba compilation, caches)
    times = []
    for _ in range(repeats):
        p.grad = None
        t0 = time.perf_counter()
        fn(p, t).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def train_step_bench(repeats: int, threads: int) -> None:
    """SegResNetDS (init_filters 16, dsdepth 3) forward + deep-supervision loss + backward +
    AdamW step on [2, 1, 64³], 4 classes: DiceCE, + hard ACE, + soft ACE, interleaved."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss
    from monai.networks.nets import SegResNetDS

    from calibseg.losses import HardL1ACEandDiceCELoss, SoftL1ACEandDiceCELoss

    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64, 64)
    y = (torch.nn.functional.avg_pool3d(torch.randn(2, 4, 64, 64, 64), 9, 1, 4) * 40).argmax(1)
    y = y[:, None].float()
    losses = {
        "DiceCE": DiceCELoss(to_onehot_y=True, softmax=True),
        "DiceCE + hard ACE": HardL1ACEandDiceCELoss(to_onehot_y=True),
        "DiceCE + soft ACE": SoftL1ACEandDiceCELoss(to_onehot_y=True),
    }
    state = {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        net = SegResNetDS(spatial_dims=3, init_filters=16, in_channels=1, out_channels=4, dsdepth=3)
        net.train()
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        state[name] = (net, opt, DeepSupervisionLoss(loss))

    def step(name: str) -> None:
        net, opt, ds = state[name]
        opt.zero_grad(set_to_none=True)
        ds(net(x), y).backward()
        opt.step()

    wall: dict[str, list[float]] = {n: [] for n in losses}
    cpu: dict[str, list[float]] = {n: [] for n in losses}
    for name in losses:
        step(name)  # warm-up (allocator, kernels)
    for _ in range(repeats):
        for name in losses:  # interleaved: drifts of a shared machine hit all three alike
            t0, c0 = time.perf_counter(), time.process_time()
            step(name)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    # the loss alone (forward + backward through the loss only) on the network's own outputs:
    # the only part of a step that differs between the three, timed precisely by many repeats
    net0 = state["DiceCE"][0]
    with torch.no_grad():
        outs = [o.detach() for o in net0(x)]
    loss_ms: dict[str, list[float]] = {n: [] for n in losses}
    for _ in range(4 * repeats):
        for name in losses:
            leaves = [o.clone().requires_grad_() for o in outs]
            t0 = time.perf_counter()
            state[name][2](leaves, y).backward()
            loss_ms[name].append(time.perf_counter() - t0)
    print(
        f"\ntraining step: SegResNetDS(init_filters=16, dsdepth=3) fwd + deep-supervision loss"
        f" + bwd + AdamW on [2, 1, 64³], 4 classes, {threads} threads, interleaved; whole step:"
        f" median and min of {repeats}; loss alone (fwd + bwd through the deep-supervision loss on"
        f" the network's outputs): median of {4 * repeats}"
    )
    print(
        f"{'loss':20s}{'step wall s':>12s}{'median':>9s}{'min':>9s}{'CPU median':>12s}"
        f"{'loss ms':>9s}{'loss / step':>13s}"
    )
    med = {n: statistics.median(wall[n]) for n in losses}
    low = {n: min(wall[n]) for n in losses}
    cmed = {n: statistics.median(cpu[n]) for n in losses}
    lms = {n: statistics.median(loss_ms[n]) for n in losses}
    base = "DiceCE"
    for name in losses:
        extra = (lms[name] - lms[base]) / med[base]
        print(
            f"{name:20s}{med[name]:12.3f}{100 * (med[name] / med[base] - 1):+8.1f}%"
            f"{100 * (low[name] / low[base] - 1):+8.1f}%{100 * (cmed[name] / cmed[base] - 1):+11.1f}%"
            f"{lms[name] * 1e3:9.1f}{100 * extra:+12.1f}%"
        )
    print(
        "overhead of the ACE term: whole-step median / min / CPU median vs DiceCE, and the loss-"
        "alone difference as a share of the DiceCE step (the precise estimate)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[2, 4, 96, 96, 96])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--train-step", action="store_true", help="also the training-step table")
    ap.add_argument("--train-only", action="store_true", help="only the training-step table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_step or args.train_only:
        train_step_bench(args.repeats, args.threads)
    if args.train_only:
        return
    torch.manual_seed(0)
    shape = tuple(args.shape)
    logits = torch.randn(shape) * 3
    labels = (logits + torch.randn(shape) * 2).argmax(1)
    # one-hot targets built as in the README: a channel-last view, not copied
    t = torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).float()
    p = logits.softmax(1).requires_grad_()
    # both our losses agree with their references before anything is timed
    for ours, ref in ((HardL1ACELoss(), loop_hard_ace), (SoftL1ACELoss(), loop_soft_ace)):
        a, b = ours(p, t).item(), ref(p, t).item()
        if abs(a - b) > 1e-4:
            raise SystemExit(f"{type(ours).__name__} = {a} differs from its reference {b}")

    rows = []
    for name, fn in (
        ("hard: calibseg HardL1ACELoss", HardL1ACELoss()),
        ("hard: per-(b,c) loop reference", loop_hard_ace),
        ("hard: binned_sums kernel only", kernel_only(False)),
        ("soft: calibseg SoftL1ACELoss", SoftL1ACELoss()),
        ("soft: MONAI-dev-style loop reference", loop_soft_ace),
        ("soft: binned_sums kernel only", kernel_only(True)),
        ("floor: |p - t|.mean()", floor),
    ):
        rows.append((name, time_ms(fn, p, t, args.repeats), peak_mib(fn, p, t)))

    hard, hard_ref = rows[0][1], rows[1][1]
    soft, soft_ref = rows[3][1], rows[4][1]
    inputs_mib = 2 * p.numel() * 4 / 2**20
    print(f"shape {list(shape)}, {args.threads} threads, forward + backward, softmax excluded")
    print(f"inputs (p, one-hot t): {inputs_mib:.0f} MiB; median of {args.repeats} runs")
    print(f"{'method':40s} {'time ms':>9s} {'x floor':>8s} {'peak MiB':>9s}")
    for name, t_ms, mem in rows:
        print(f"{name:40s} {t_ms:9.1f} {t_ms / rows[-1][1]:8.1f} {mem:9.0f}")
    print(f"hard speed-up vs loop reference: {hard_ref / hard:.1f}x")
    print(f"soft speed-up vs MONAI-dev-style reference: {soft_ref / soft:.1f}x")
    print(f"soft / hard peak memory: {rows[3][2] / max(rows[0][2], 1e-9):.2f}")


if __name__ == "__main__":
    main()
