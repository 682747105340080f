"""Deterministic, exhaustive, group-aware splits."""

from __future__ import annotations

import pytest

from calibseg.data import make_splits
from calibseg.data.splits import split_counts


def _items(n):
    return [{"case": f"case_{i:03d}", "image": f"{i}.nii.gz"} for i in range(n)]


def _ids(splits):
    return {k: [it["case"] for it in v] for k, v in splits.items()}


@pytest.mark.parametrize("n", [3, 4, 5, 10, 24, 101])
def test_partition_and_sizes(n):
    s = make_splits(_items(n))
    ids = _ids(s)
    everything = ids["training"] + ids["validation"] + ids["test"]
    assert sorted(everything) == [f"case_{i:03d}" for i in range(n)]  # each case exactly once
    assert all(len(v) >= 1 for v in ids.values())
    assert len(ids["validation"]) == max(1, round(0.2 * n)) or n < 5
    assert all(v == sorted(v) for v in ids.values())


def test_deterministic_order_independent_and_seeded():
    items = _items(20)
    a = _ids(make_splits(items, split_seed=0))
    b = _ids(make_splits(list(reversed(items)), split_seed=0))
    assert a == b
    c = _ids(make_splits(items, split_seed=1))
    assert a != c


def test_groups_stay_together():
    items = [{"case": f"p{p}_f{f}", "group": f"p{p}"} for p in range(10) for f in (1, 2)]
    s = make_splits(items, split_seed=5)
    where = {it["case"]: k for k, v in s.items() for it in v}
    assert all(where[f"p{p}_f1"] == where[f"p{p}_f2"] for p in range(10))
    assert [len(v) for v in s.values()] == [12, 4, 4]


def test_counts_small_and_fraction_edge_cases():
    assert split_counts(2, (0.6, 0.2, 0.2)) == (2, 0, 0)
    assert split_counts(3, (0.6, 0.2, 0.2)) == (1, 1, 1)
    assert split_counts(3, (0.1, 0.45, 0.45)) == (1, 1, 1)
    assert split_counts(10, (0.8, 0.2, 0.0)) == (8, 2, 0)


def test_bad_input():
    with pytest.raises(ValueError, match="summing to 1"):
        make_splits(_items(5), fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="duplicate"):
        make_splits(_items(3) + _items(1))
    with pytest.raises(ValueError, match="'case'"):
        make_splits([{"image": "x"}])
