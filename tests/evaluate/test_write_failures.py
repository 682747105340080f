"""Disk full during `evaluate`: no partial result folder, one line naming file and cause; the
bundle's configs/inference_eval.yaml gives the evaluation settings (flags override)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np

from calibseg import storage
from calibseg.cli import common
from calibseg.cli.app import app
from calibseg.evaluate import evaluate_run

NAMES = ["background", "liver", "tumour"]


def _disk_full_on(name: str, monkeypatch) -> None:
    """Writes of files called ``name`` fail as on a full disk (ENOSPC), after a partial write."""
    real_open = open

    class _Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, k):
            return getattr(self._f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and os.path.basename(str(path)).startswith(f".{name}."):
            return _Full(f)
        return f

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def test_disk_full_leaves_no_partial_evaluation(fake, no_figures, tmp_path, monkeypatch, capsys):
    labels = fake.random_labels(2)
    bundle = fake.make_run(tmp_path, labels, [fake.one_hot_last(x, 3) for x in labels], NAMES)
    run = os.path.join(bundle, "seed_0")
    _disk_full_on("summary.json", monkeypatch)  # the last file: everything else was written
    rc = common.run_app(app, ["evaluate", bundle])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    final = os.path.join(run, "evaluation", "summary.json")
    assert f"cannot write {final}: No space left on device" in err
    assert sorted(os.listdir(run)) == ["predictions"]  # no evaluation*/ and no temporary folder

    monkeypatch.undo()
    s = evaluate_run(bundle, progress=False)  # the rerun goes to evaluation/, not evaluation_2/
    assert s["output_dir"] == os.path.join(run, "evaluation")
    assert sorted(os.listdir(run)) == ["evaluation", "predictions"]
    assert {"summary.json", "cases.csv", "bin_stats.npz"} <= set(os.listdir(s["output_dir"]))


def test_interrupted_remote_evaluation_is_not_taken_as_done(fake, no_figures, tmp_path, s3_bucket):
    from calibseg.evaluate.pipeline import next_free_dir

    url = f"s3://{s3_bucket}/run/evaluation"
    storage.write_text(f"{url}/cases.csv", "case,class,metric,value\n")  # no summary.json
    assert next_free_dir(url) == url
    storage.write_json(f"{url}/summary.json", {})
    assert next_free_dir(url) == f"{url}_2"


def test_cli_reads_inference_eval_yaml_flags_override(fake, no_figures, tmp_path, monkeypatch):
    labels = fake.random_labels(2, c=4, seed=3)
    names = ["background", "kidney", "tumour", "cyst"]
    probs = [fake.one_hot_last(x, 4) for x in labels]
    bundle = fake.make_run(tmp_path, labels, probs, names, dataset="kits23")
    with open(os.path.join(bundle, "configs", "inference_eval.yaml"), "w") as f:
        f.write("eval_num_bins: 7\neval_regions: true\neval_case_figures: false\n")
    monkeypatch.setenv("COLUMNS", "200")

    assert common.run_app(app, ["evaluate", bundle]) == 0
    s = json.load(open(os.path.join(bundle, "seed_0", "evaluation", "summary.json")))
    assert s["regions"] is True and s["num_bins"] == 7
    assert s["class_names"] == ["background", "tumour", "masses", "kidney_and_masses"]
    with np.load(os.path.join(bundle, "seed_0", "evaluation", "bin_stats.npz")) as z:
        assert any(a.shape[-1] == 7 for a in z.values() if a.ndim == 3)

    assert common.run_app(app, ["evaluate", bundle, "--classes", "--bins", "5"]) == 0
    s = json.load(open(os.path.join(bundle, "seed_0", "evaluation_2", "summary.json")))
    assert s["regions"] is False and s["num_bins"] == 5 and s["class_names"] == names


def test_cli_without_inference_eval_yaml_uses_defaults(fake, no_figures, tmp_path):
    labels = fake.random_labels(1)
    bundle = fake.make_run(tmp_path, labels, [fake.one_hot_last(x, 3) for x in labels], NAMES)
    assert not os.path.exists(os.path.join(bundle, "configs", "inference_eval.yaml"))
    assert common.run_app(app, ["evaluate", bundle]) == 0
    s = json.load(open(os.path.join(bundle, "seed_0", "evaluation", "summary.json")))
    assert s["num_bins"] == 20 and s["regions"] is False
