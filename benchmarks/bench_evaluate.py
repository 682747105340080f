"""Evaluation throughput in-process vs a 2-worker LocalCluster, and peak memory per worker.

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


def _case(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    grid = np.indices((size,) * 3).astype(np.float32)
    label = np.zeros((size,) * 3, np.uint8)
    for c in range(1, classes):
        centre = rng.uniform(0.3, 0.7, 3) * size
        radius = rng.uniform(0.1, 0.25) * size
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="Folder for the generated inputs.")
    args = ap.parse_args()

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
