"""Deterministic training / validation / test splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["make_splits", "split_counts"]


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Number of units in (training, validation, test) for ``n`` units.

    Validation and test get ``round(n * fraction)``; with ``n >= 3`` every split with a
    non-zero fraction gets at least one unit and training keeps at least one.
    """
    f = np.asarray(fractions, dtype=float)
    n_val = int(round(n * f[1]))
    n_test = int(round(n * f[2]))
    if n >= 3:
        n_val = max(n_val, 1 if f[1] > 0 else 0)
        n_test = max(n_test, 1 if f[2] > 0 else 0)
        while n - n_val - n_test < 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
    else:
        n_val, n_test = 0, 0
    return n - n_val - n_test, n_val, n_test


def make_splits(
    items: Sequence[dict],
    split_seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> dict[str, list[dict]]:
    """Split data items into ``{"training", "validation", "test"}`` lists.

    Deterministic given ``split_seed`` and the set of case ids (independent of item order and of
    the training seed). Items sharing a ``"group"`` value (e.g. the ED and ES frames of one
    ACDC patient) land in the same split; otherwise each ``"case"`` is its own group. Every
    item is in exactly one split; with >= 3 groups each split gets at least one group
    (fewer groups all go to training). Within a split, items are sorted by case id.
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}."
        )
    items = list(items)
    cases = [str(it.get("case", "")) for it in items]
    if any(not c for c in cases):
        raise ValueError("every item needs a non-empty 'case' id to be split.")
    if len(set(cases)) != len(cases):
        dup = sorted({c for c in cases if cases.count(c) > 1})
        raise ValueError(f"duplicate case ids: {dup[:5]}.")
    groups = [str(it.get("group", c)) for it, c in zip(items, cases, strict=True)]
    units = sorted(set(groups))
    order = np.random.default_rng(split_seed).permutation(len(units))
    n_train, n_val, _ = split_counts(len(units), f)
    which = np.empty(len(units), dtype=np.int64)
    which[order] = np.repeat([0, 1, 2], [n_train, n_val, len(units) - n_train - n_val])
    unit_split = dict(zip(units, which.tolist(), strict=True))
    names = ("training", "validation", "test")
    out: dict[str, list[dict]] = {n: [] for n in names}
    for idx in np.argsort(cases, kind="stable"):
        out[names[unit_split[groups[idx]]]].append(items[idx])
    return out
