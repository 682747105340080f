"""Evaluation throughput in-process vs a 2-worker LocalCluster, and peak memory per worker;
with ``--breakdown``, where the time of one case (128×128×96×4) goes.

Generates N synthetic cases (default 64) of 128³ voxels × 4 classes on the fly — smooth random
probability maps (softmax of blurred noise plus label blobs) and labels, written as NIfTI
into a temporary bundle — then runs ``calibseg.evaluate.evaluate_run`` in-process and with
``workers=2``. RSS is sampled every 50 ms with psutil (the process itself in-process; each
worker process on the cluster). Memory per worker must not grow with the number of cases:
the peak over the first half of the run is compared with the peak over the whole run.

    python benchmarks/bench_evaluate.py --cases 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np


def _case(rng: np.random.Generator, size, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [x, y, z], channel-last probabilities [x, y, z, C]); ``size``: int or 3 ints."""
    from scipy.ndimage import gaussian_filter

    shape = tuple(size) if isinstance(size, tuple | list) else (size,) * 3
    grid = np.indices(shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for c in range(1, classes):
        centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
        radius = rng.uniform(0.1, 0.25) * min(shape)
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2] = c
    logits = np.stack(
        [
            gaussian_filter(rng.normal(size=label.shape).astype(np.float32), 4) * 8
            for _ in range(classes)
        ],
        -1,
    )
    logits += 3.0 * (label[..., None] == np.arange(classes))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return label, (e / e.sum(-1, keepdims=True)).astype(np.float32)


def make_bundle(root: str, n: int, size: int, classes: int, unique: int = 4) -> str:
    """A bundle with ``n`` test cases (``unique`` distinct volumes, hard-linked for the rest)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    bundle = os.path.join(root, "bundle")
    pred = os.path.join(bundle, "seed_0", "predictions")
    data = os.path.join(root, "data")
    for d in (pred, data, os.path.join(bundle, "configs")):
        os.makedirs(d, exist_ok=True)
    items = []
    for i in range(n):
        case = f"case_{i:03d}"
        lp, pp = os.path.join(data, f"{case}.nii.gz"), os.path.join(pred, f"{case}_prob.nii.gz")
        if i < unique:
            label, prob = _case(rng, size, classes)
            nib.save(nib.Nifti1Image(label, np.eye(4)), lp)
            nib.save(nib.Nifti1Image(prob, np.eye(4)), pp)
        else:
            src = i % unique
            os.link(os.path.join(data, f"case_{src:03d}.nii.gz"), lp)
            os.link(os.path.join(pred, f"case_{src:03d}_prob.nii.gz"), pp)
        items.append({"case": case, "image": lp, "label": lp})
    with open(os.path.join(bundle, "splits.json"), "w") as f:
        json.dump({"training": [], "validation": [], "test": items}, f)
    names = ["background"] + [f"class_{c}" for c in range(1, classes)]
    with open(os.path.join(bundle, "configs", "data.yaml"), "w") as f:
        f.write(f"dataset: synthetic\nclass_names: {json.dumps(names)}\n")
    return bundle


class RSSSampler:
    """Samples the RSS of a set of processes every ``interval`` s: ``{pid: [(t, bytes)]}``."""

    def __init__(self, pids_fn, interval: float = 0.05) -> None:
        import psutil

        self._psutil, self._pids_fn, self.interval = psutil, pids_fn, interval
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for pid in self._pids_fn():
                try:
                    rss = self._psutil.Process(pid).memory_info().rss
                except self._psutil.Error:
                    continue
                self.samples.setdefault(pid, []).append((now, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.t1 = time.perf_counter()

    def peaks(self) -> dict[int, tuple[float, float]]:
        """{pid: (peak MiB over the first half of the run, peak MiB over the whole run)}."""
        mid = (self.t0 + self.t1) / 2
        out = {}
        for pid, s in self.samples.items():
            first = [r for t, r in s if t <= mid] or [0]
            out[pid] = (max(first) / 2**20, max(r for _, r in s) / 2**20)
        return out


def _cpu(fn, repeats: int = 3):
    """(min process CPU time in s, last result) of ``fn()``."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def breakdown(shape=(128, 128, 96), classes: int = 4, tmp: str | None = None) -> None:
    """Where the time of one ``evaluate_case`` goes (process CPU time, min of 3)."""
    import warnings

    import nibabel as nib
    import torch
    from monai.metrics import compute_dice
    from monai.metrics import compute_hausdorff_distance as monai_hd

    from calibseg.binning import compute_bin_stats
    from calibseg.ensemble.io import load_nifti
    from calibseg.evaluate.pipeline import evaluate_case
    from calibseg.metrics.surface_distance import compute_hausdorff_distance

    root = tempfile.mkdtemp(prefix="bench-case-", dir=tmp)
    try:
        label, prob = _case(np.random.default_rng(1), shape, classes)
        spacing = (0.8, 0.8, 2.5)
        aff = np.diag([*spacing, 1.0])
        lp, pp = os.path.join(root, "label.nii.gz"), os.path.join(root, "prob.nii.gz")
        nib.save(nib.Nifti1Image(label, aff), lp)
        nib.save(nib.Nifti1Image(prob, aff), pp)
        task = {"case": "c", "label": lp, "prob": pp}
        evaluate_case(task, classes)  # warm-up: imports, kernel load
        total, _ = _cpu(lambda: evaluate_case(task, classes))
        t_load, _ = _cpu(lambda: (load_nifti(lp), load_nifti(pp)))
        lab = torch.from_numpy(label.astype(np.int64))
        classes_t = torch.arange(classes).view(-1, 1, 1, 1)
        y = (lab[None] == classes_t).float()[None]
        seg = (torch.from_numpy(prob.argmax(-1))[None] == classes_t).float()[None]
        p_cl = torch.from_numpy(prob).movedim(-1, 0)[None]  # channel-last view, as stored
        t_cal, _ = _cpu(lambda: compute_bin_stats(p_cl, y).errors())
        t_dice, _ = _cpu(lambda: compute_dice(seg, y, include_background=True))
        t_hd, ours = _cpu(
            lambda: compute_hausdorff_distance(seg, y, True, 95, spacing=list(spacing))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_mhd, ref = _cpu(
                lambda: monai_hd(seg, y, include_background=True, percentile=95, spacing=spacing)
            )
        same = torch.equal(ours, ref)
        print(f"\nevaluate_case on {shape} x {classes} classes (process CPU time, min of 3)")
        print(f"  whole case                      {total:6.3f} s")
        print(f"  read 2 NIfTI (gzip)             {t_load:6.3f} s  {100 * t_load / total:5.1f} %")
        print(f"  calibration (bin stats, errors) {t_cal:6.3f} s  {100 * t_cal / total:5.1f} %")
        print(f"  Dice (MONAI)                    {t_dice:6.3f} s  {100 * t_dice / total:5.1f} %")
        print(f"  HD95 (calibseg)                 {t_hd:6.3f} s  {100 * t_hd / total:5.1f} %")
        print(
            f"  HD95 (MONAI, not in the case)   {t_mhd:6.3f} s  ×{t_mhd / t_hd:.1f} of calibseg's;"
            f" identical values: {same}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="Folder for the generated inputs.")
    ap.add_argument("--breakdown", action="store_true", help="only the per-case breakdown")
    args = ap.parse_args()
    if args.breakdown:
        breakdown(tmp=args.tmp)
        return

    from calibseg.evaluate import evaluate_run
    from distributed import Client, LocalCluster

    root = tempfile.mkdtemp(prefix="bench-evaluate-", dir=args.tmp)
    try:
        t = time.perf_counter()
        bundle = make_bundle(root, args.cases, args.size, args.classes)
        print(
            f"generated {args.cases} cases of {args.size}³ × {args.classes} in "
            f"{time.perf_counter() - t:.1f} s ({root})"
        )

        import matplotlib.pyplot  # noqa: F401
        import monai.metrics  # noqa: F401  (imports outside the timed region, as on the workers)

        with RSSSampler(lambda: [os.getpid()]) as s_in:
            a = evaluate_run(bundle, out_dir=os.path.join(root, "inproc"), progress=False)
        t_in = s_in.t1 - s_in.t0
        ((half_in, peak_in),) = s_in.peaks().values()

        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
        pids = list(client.run(os.getpid).values())
        # warm the workers (imports) so the timing is the evaluation, not the start-up
        client.run(lambda: __import__("calibseg.evaluate.pipeline") and __import__("monai.metrics"))
        with RSSSampler(lambda: pids) as s_cl:
            b = evaluate_run(
                bundle,
                out_dir=os.path.join(root, "cluster"),
                progress=False,
                scheduler=cluster.scheduler_address,
            )
        t_cl = s_cl.t1 - s_cl.t0
        client.close()
        cluster.close()
        same = a["classes"] == b["classes"]

        print(
            f"in-process      : {t_in:7.1f} s  {args.cases / t_in:6.3f} cases/s  "
            f"peak RSS {peak_in:7.0f} MiB (first half {half_in:7.0f} MiB)"
        )
        print(
            f"{args.workers}-worker cluster: {t_cl:7.1f} s  {args.cases / t_cl:6.3f} cases/s  "
            f"speed-up ×{t_in / t_cl:.2f}"
        )
        for pid, (half, peak) in s_cl.peaks().items():
            print(
                f"  worker {pid}: peak RSS {peak:7.0f} MiB (first half {half:7.0f} MiB, "
                f"growth {peak - half:+.0f} MiB)"
            )
        print(f"identical summaries: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
