"""Checkpoints load with torch.load(weights_only=True): a crafted pickle never runs."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from calibseg.bundles import checkpoint as C
from calibseg.bundles import runner as R

CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")


class _Planted:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _malicious_checkpoint(path, marker: str, bundle_hash: str = "0" * 64) -> None:
    torch.save({"model": _Planted(marker), "bundle_hash": bundle_hash, "format": 2}, path)


def test_crafted_pickle_is_refused_by_predict_console_script(tmp_path, tiny_bundle):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    _malicious_checkpoint(evil, str(marker), C.bundle_hash(tiny_bundle))
    # the file really is a code-running pickle: a plain load executes it
    torch.load(evil, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()

    res = subprocess.run(
        [CALIBSEG, "predict", tiny_bundle, "--checkpoint", str(evil)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    err = res.stderr.strip()
    assert err.count("\n") == 0 and "refusing to load checkpoint" in err, err
    assert not marker.exists()


def test_planted_last_pt_on_s3_is_refused_before_training(
    tmp_path, s3_bucket, synth_root, tiny_overrides, monkeypatch
):
    from calibseg import storage
    from calibseg.bundles import bundle_hash, create_bundle

    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    bundle = create_bundle(
        "synthetic",
        "baseline_ce",
        out=f"s3://{s3_bucket}/bundles",
        data_root=synth_root,
        overrides=tiny_overrides,
    )
    marker = tmp_path / "code_ran"
    evil = tmp_path / "last.pt"
    _malicious_checkpoint(evil, str(marker), bundle_hash(bundle))
    storage.write_bytes(f"{bundle}/seed_0/checkpoints/last.pt", evil.read_bytes())
    from monai.engines import SupervisedTrainer

    trained = {"n": 0}
    real = SupervisedTrainer.run

    def counting(self, *a, **k):
        trained["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(SupervisedTrainer, "run", counting)
    with pytest.raises(ValueError, match="refusing to load checkpoint"):
        R.train(bundle, seed=0)
    assert not marker.exists() and trained["n"] == 0


def test_rng_state_is_plain_and_restores_every_generator():
    state = C.rng_state()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain values only
    expected = (
        torch.rand(3),
        np.random.random(3),  # noqa: NPY002 - the global state is what is saved
        np.random.standard_normal(),  # noqa: NPY002 - exercises the Gaussian cache
        random.random(),
        random.gauss(0, 1),
    )
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    C.set_rng_state(loaded)
    again = (
        torch.rand(3),
        np.random.random(3),  # noqa: NPY002
        np.random.standard_normal(),  # noqa: NPY002
        random.random(),
        random.gauss(0, 1),
    )
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_checkpoints_written_by_training_load_with_weights_only(trained):
    for name in ("last", "best", "final"):
        ckpt = torch.load(
            os.path.join(trained, "checkpoints", f"{name}.pt"),
            map_location="cpu",
            weights_only=True,
        )
        assert ckpt["run"]["format"] == C.CHECKPOINT_FORMAT == 3 and "model" in ckpt
        assert {"optimizer", "scheduler", "trainer"} <= set(ckpt) and "rng" in ckpt["run"]
