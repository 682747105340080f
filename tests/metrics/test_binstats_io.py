"""bin_stats.npz files: round trip, URLs, missing and corrupt files."""

import os

import numpy as np
import pytest
import torch

from calibseg.binning import BinStats, compute_bin_stats
from calibseg.metrics import load_bin_stats, save_bin_stats


@pytest.fixture
def stats():
    p = torch.rand(3, 2, 40)
    return compute_bin_stats(p, (torch.rand_like(p) < p).float(), 6)


def test_round_trip_is_exact(tmp_path, stats):
    path = tmp_path / "ev" / "bin_stats.npz"
    save_bin_stats(path, stats, ["a", "b", "case 3"], ["bg", "tumour"])
    back, cases, classes = load_bin_stats(path)
    assert cases == ["a", "b", "case 3"] and classes == ["bg", "tumour"]
    assert back.weight.dtype == torch.int64 and torch.equal(back.weight, stats.weight)
    assert torch.equal(back.sum_p, stats.sum_p) and torch.equal(back.sum_gt, stats.sum_gt)
    assert os.listdir(path.parent) == ["bin_stats.npz"]  # no temporary file left behind


def test_soft_weights_and_url(stats):
    soft = BinStats(stats.weight.double() + 0.25, stats.sum_p, stats.sum_gt)
    url = "memory://calibseg-test/ev/bin_stats.npz"
    save_bin_stats(url, soft, ["a", "b", "c"], ["x", "y"])
    back, _, _ = load_bin_stats(url)
    assert back.weight.dtype == torch.float64 and torch.equal(back.weight, soft.weight)


def test_missing_and_corrupt_files(tmp_path, stats):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_bin_stats(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        load_bin_stats(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, weight=np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="corrupt.*missing"):
        load_bin_stats(partial)


def test_names_must_match(tmp_path, stats):
    with pytest.raises(ValueError, match="2 case_ids .* 3 cases"):
        save_bin_stats(tmp_path / "s.npz", stats, ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="1 class_names .* 2 classes"):
        save_bin_stats(tmp_path / "s.npz", stats, ["a", "b", "c"], ["x"])
    with pytest.raises(TypeError, match="BinStats"):
        save_bin_stats(tmp_path / "s.npz", {"weight": 1}, [], [])
    assert not (tmp_path / "s.npz").exists()
