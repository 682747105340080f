"""Synthetic multi-rater generator: layout, determinism, rater disagreement, speed."""

from __future__ import annotations

import itertools
import json
import os
import time

import nibabel as nib
import numpy as np
import pytest

from calibseg.data import get_dataset
from calibseg.data.synthetic import CLASS_NAMES, generate, make_case


def _read(path):
    return np.asarray(nib.load(path).dataobj)


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_layout_and_speed(tmp_path):
    t0 = time.process_time()
    path = generate(str(tmp_path), n_cases=24, n_raters=3, shape=(48, 48, 32), seed=0)
    cpu = time.process_time() - t0
    assert cpu < 5.0, f"generating 24 cases took {cpu:.1f} s CPU"
    meta = json.loads(open(path).read())
    assert meta["numTraining"] == 24 and meta["labels"] == {
        str(i): n for i, n in enumerate(CLASS_NAMES)
    }
    entry = meta["training"][0]
    assert entry["image"] == "./imagesTr/synth_000.nii.gz"
    assert entry["raters"] == [f"./labelsTr/synth_000_rater{k}.nii.gz" for k in (1, 2, 3)]
    assert len(_files(str(tmp_path))) == 1 + 24 * 5
    img = nib.load(str(tmp_path / "imagesTr" / "synth_000.nii.gz"))
    assert img.shape == (48, 48, 32) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 2.0))
    items = get_dataset("synthetic").scan(str(tmp_path))
    assert len(items) == 24 and get_dataset("synthetic").validate(items) == []


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_cases=2, n_raters=2, shape=(24, 24, 12))
    generate(str(tmp_path / "a"), seed=3, **kw)
    generate(str(tmp_path / "b"), seed=3, **kw)
    generate(str(tmp_path / "c"), seed=4, **kw)
    files = _files(str(tmp_path / "a"))
    assert files == _files(str(tmp_path / "b"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for f in ("imagesTr/synth_000.nii.gz", "labelsTr/synth_000_rater1.nii.gz"):
        assert not np.array_equal(_read(str(tmp_path / "a" / f)), _read(str(tmp_path / "c" / f)))


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_raters_disagree_plausibly_and_majority_vote():
    rng = np.random.default_rng(0)
    dices, truth_dice = [], []
    for _ in range(4):
        image, truth, raters, majority = make_case(rng, (48, 48, 32), n_raters=3)
        counts = np.stack([(raters == c).sum(0) for c in range(4)])  # [C, X, Y, Z]
        # majority label has the highest vote count; ties go to the lower class
        assert (
            counts[majority, np.arange(48)[:, None, None], np.arange(48)[:, None], np.arange(32)]
            == counts.max(0)
        ).all()
        first_max = np.argmax(counts == counts.max(0), axis=0)
        assert np.array_equal(majority, first_max)
        for c in (1, 2, 3):
            assert (truth == c).sum() > 0
            dices.append(
                [
                    _dice(raters[i] == c, raters[j] == c)
                    for i, j in itertools.combinations(range(3), 2)
                ]
            )
            truth_dice.append(_dice(majority == c, truth == c))
        # contrast: background < vessel < organ < lesion in the mean image intensity
        means = [image[truth == c].mean() for c in range(4)]
        assert means[0] < means[2] < means[1] < means[3]
    mean_pairwise = float(np.mean(dices))
    assert 0.7 < mean_pairwise < 0.95, mean_pairwise
    assert np.min(dices) < 0.95  # raters never agree perfectly
    assert np.mean(truth_dice) > mean_pairwise  # the majority vote is closer to the truth


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_cases=0), "n_cases"),
        (dict(n_raters=0), "n_raters"),
        (dict(shape=(4, 48, 32)), "shape"),
        (dict(spacing=(1, 0, 1)), "spacing"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(str(tmp_path), **kwargs)


def test_remote_urls_generate_scan_validate(tmp_path, monkeypatch):
    from calibseg import storage

    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    url = "memory://calibseg-data-test/synth"
    try:
        assert generate(url, n_cases=2, n_raters=2, shape=(12, 12, 8)) == url + "/dataset.json"
        spec = get_dataset("synthetic")
        items = spec.scan(spec.resolve_root(url))
        assert items[1]["raters"][1] == url + "/labelsTr/synth_001_rater2.nii.gz"
        assert spec.validate(items) == []
        storage.rm(items[0]["label"])
        assert spec.validate(items) == [f"synth_000: missing label file ({items[0]['label']})"]
    finally:
        storage.rm("memory://calibseg-data-test", recursive=True)
