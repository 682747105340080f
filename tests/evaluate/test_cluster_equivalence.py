"""A 2-worker LocalCluster evaluation gives exactly the in-process result."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest

from calibseg import storage
from calibseg.evaluate import evaluate_run
from calibseg.metrics import load_bin_stats


@pytest.mark.slow
def test_local_cluster_equals_inprocess_exactly(fake, no_figures, tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    labels = fake.random_labels(5, shape=(12, 10, 9), seed=7)
    probs = []
    for lab in labels:
        logits = rng.normal(size=(*lab.shape, 3)) + 2.0 * fake.one_hot_last(lab, 3)
        e = np.exp(logits)
        probs.append(e / e.sum(-1, keepdims=True))
    bundle = fake.make_run(tmp_path, labels, probs, ["background", "a", "b"])
    a = evaluate_run(bundle, out_dir=tmp_path / "inproc", progress=False)
    # workers forked from one forkserver that imported torch/MONAI once (spawned workers each
    # re-import them: ~10-30 s on a loaded 2-core machine); the computation is the same
    import multiprocessing

    from distributed import utils as dutils

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["distributed", "calibseg.evaluate.pipeline", "monai.metrics"])
    monkeypatch.setattr(dutils, "_forkserver_preload_set", True)
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        b = evaluate_run(bundle, out_dir=tmp_path / "cluster", workers=2, progress=False)
    assert a["classes"] == b["classes"]
    csv_a = storage.read_text(os.path.join(a["output_dir"], "cases.csv"))
    assert csv_a == storage.read_text(os.path.join(b["output_dir"], "cases.csv"))
    sa, ca, _ = load_bin_stats(os.path.join(a["output_dir"], "bin_stats.npz"))
    sb, cb, _ = load_bin_stats(os.path.join(b["output_dir"], "bin_stats.npz"))
    assert ca == cb == [f"case_{i:02d}" for i in range(5)]
    for x, y in ((sa.weight, sb.weight), (sa.sum_p, sb.sum_p), (sa.sum_gt, sb.sum_gt)):
        assert np.array_equal(x.numpy(), y.numpy())
    # micro ECE really is the error of the summed statistics (not a mean of case errors)
    micro = sa.total().errors()["ece"][0].numpy()
    got = [a["classes"][n]["micro"]["ece"] for n in ("background", "a", "b")]
    np.testing.assert_array_equal(got, micro)
    assert got != [a["classes"][n]["macro"]["ece"] for n in ("background", "a", "b")]
