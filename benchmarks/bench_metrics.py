"""Per-case ECE/ACE/MCE and the dataset reliability histogram: calibseg vs MONAI 1.6.1.

Cases ``[1, C, D, H, W]`` are generated on the fly (never more than one in memory) and the
generation is not timed. calibseg bins each case once (``CalibrationAccumulator``) and gets
ECE, ACE, MCE, the pooled (micro) errors and the reliability histogram from those bins.
MONAI needs one ``CalibrationErrorMetric`` per reduction (each bins again) and
``calibration_binning`` for the histogram; the single-metric time (ECE only) is printed too.

Usage: python benchmarks/bench_metrics.py [--cases 100] [--shape 4 128 128 128] [--bins 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.metrics import CalibrationErrorMetric as MonaiCalibrationErrorMetric
from monai.metrics import calibration_binning as monai_binning

from calibseg.metrics import CalibrationAccumulator, calculate_heatmap_from_bins


def make_case(i: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A softmax prediction and a one-hot label drawn from a sharpened version of it."""
    g = torch.Generator().manual_seed(i)
    c = shape[0]
    logits = torch.randn(1, *shape, generator=g) * 2.5
    p = torch.softmax(logits, 1)
    lab = (logits + 0.8 * torch.randn(1, *shape, generator=g)).argmax(1)
    y = torch.zeros(1, *shape).scatter_(1, lab.unsqueeze(1), 1.0)
    assert y.shape[1] == c
    return p, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 128, 128, 128])
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    k = args.bins

    t_ours = t_monai_all = t_monai_ece = 0.0
    acc = CalibrationAccumulator(num_bins=k)
    monai_metrics = {
        r: MonaiCalibrationErrorMetric(num_bins=k, calibration_reduction=r, metric_reduction="none")
        for r in ("expected", "average", "maximum")
    }
    monai_mean_gt = []
    for i in range(args.cases):
        p, y = make_case(i, shape)

        t0 = time.perf_counter()
        acc.update(p, y)
        t_ours += time.perf_counter() - t0

        t0 = time.perf_counter()
        monai_metrics["expected"](p, y)
        t_monai_ece += time.perf_counter() - t0
        for r in ("average", "maximum"):
            monai_metrics[r](p, y)
        monai_mean_gt.append(monai_binning(p, y, num_bins=k)[1])
        t_monai_all += time.perf_counter() - t0

    t0 = time.perf_counter()
    res = acc.result()
    per_case = acc.per_case_errors()
    heat = calculate_heatmap_from_bins(acc.case_stats.means()[1], k)
    t_ours += time.perf_counter() - t0

    t0 = time.perf_counter()
    monai_vals = {r: m.aggregate() for r, m in monai_metrics.items()}
    monai_heat = calculate_heatmap_from_bins(torch.cat(monai_mean_gt), k)
    t_monai_all += time.perf_counter() - t0

    # the two must agree before their times mean anything
    for r, key in (("expected", "ece"), ("average", "ace"), ("maximum", "mce")):
        torch.testing.assert_close(per_case[key].float(), monai_vals[r], atol=1e-5, rtol=0)
    assert torch.equal(heat, monai_heat)

    n = args.cases
    vox = n * torch.Size(shape).numel()
    print(
        f"cases: {n} x [1, {', '.join(map(str, shape))}], {k} bins, {torch.get_num_threads()} threads"
    )
    print(
        f"calibseg  ECE+ACE+MCE+histogram+micro: {t_ours:8.2f} s  ({t_ours / n * 1e3:7.1f} ms/case, "
        f"{vox / t_ours / 1e6:6.1f} Mvox/s)"
    )
    print(
        f"MONAI     ECE+ACE+MCE+histogram:       {t_monai_all:8.2f} s  ({t_monai_all / n * 1e3:7.1f} ms/case)"
    )
    print(
        f"MONAI     ECE only:                    {t_monai_ece:8.2f} s  ({t_monai_ece / n * 1e3:7.1f} ms/case)"
    )
    print(
        f"speed-up  same outputs: {t_monai_all / t_ours:5.2f}x   vs MONAI ECE only: {t_monai_ece / t_ours:5.2f}x"
    )
    print(
        f"dataset ECE per class  macro {[round(v, 4) for v in res['macro']['ece'].tolist()]}  "
        f"micro {[round(v, 4) for v in res['micro']['ece'].tolist()]}"
    )


if __name__ == "__main__":
    main()
