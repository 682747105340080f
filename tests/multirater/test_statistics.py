import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from calibseg.metrics.statistics import (
    bootstrap_ci,
    compare_models,
    paired_comparison,
    wilcoxon_signed_rank,
)


def test_wilcoxon_matches_scipy_and_degenerate_cases():
    rng = np.random.default_rng(0)
    a = rng.random(12)
    b = a + 0.05 + 0.02 * rng.standard_normal(12)
    stat, p = wilcoxon_signed_rank(a, b)
    ref = wilcoxon(a - b)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert all(math.isnan(v) for v in wilcoxon_signed_rank(a, a))
    assert all(math.isnan(v) for v in wilcoxon_signed_rank([1.0], [2.0]))


def test_bootstrap_ci_brackets_the_mean_and_matches_a_loop():
    a = np.array([0.5, 0.4, 0.7, 0.3, 0.6, 0.55, 0.45])
    d = np.array([0.1, 0.3, -0.05, 0.2, 0.15, 0.0, 0.25])
    lo, hi = bootstrap_ci(a, a + d, n_boot=2000, seed=3)
    assert lo < d.mean() < hi
    # paired: one resample of case indices for both models
    rng = np.random.default_rng(3)
    idx = rng.integers(0, d.size, size=(2000, d.size))
    loop = [((a + d)[idx[i]] - a[idx[i]]).mean() for i in range(2000)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])))
    assert bootstrap_ci([0.1, 0.5, 0.3], [0.3, 0.7, 0.5]) == pytest.approx((0.2, 0.2))
    with pytest.raises(ValueError, match="same number of cases"):
        bootstrap_ci([0.1, 0.2], [0.3])


def test_paired_comparison_drops_nan_pairs():
    res = paired_comparison([0.5, 0.6, np.nan, 0.7], [0.6, 0.8, 0.9, 0.75], n_boot=500)
    assert res["n_cases"] == 3
    assert res["mean_diff"] == pytest.approx((0.1 + 0.2 + 0.05) / 3)


def _table():
    rows = []
    vals = {
        "ens": [0.80, 0.70, 0.90, 0.85],
        "m1": [0.70, 0.60, 0.88, 0.80],
        "m2": [0.74, 0.66, 0.80, 0.70],
    }
    for model, v in vals.items():
        for i, x in enumerate(v):
            rows.append((f"c{i}", model, "", "organ", "consensus", "dice_consensus", x))
            rows.append((f"c{i}", model, "", "organ", "1", "hd95", 1.0))
    return pd.DataFrame(
        rows, columns=["case", "model", "group", "class", "rater", "metric", "value"]
    )


def test_compare_models_pairs_cases_and_averages_members_per_case():
    df = _table()
    res = compare_models(df, ["m1", "m2"], "ens", "dice_consensus", n_boot=1000)
    assert len(res) == 1
    r = res.iloc[0]
    # one observation per case (member mean), never the 8 pooled member rows
    assert r["n_cases"] == 4
    member_mean = np.array([0.72, 0.63, 0.84, 0.75])
    ens = np.array([0.80, 0.70, 0.90, 0.85])
    assert r["mean_diff"] == pytest.approx((ens - member_mean).mean())
    assert r["p_value"] == pytest.approx(wilcoxon(member_mean - ens).pvalue)
    assert r["ci_low"] > 0
    with pytest.raises(ValueError, match="model\\(s\\) nope"):
        compare_models(df, "nope", "ens", "dice_consensus")


def test_compare_models_never_averages_groups_and_keeps_regions_apart():
    cols = ["case", "model", "group", "region", "num_bins", "class", "rater", "metric", "value"]
    rows = []
    ens = [0.80, 0.70, 0.90, 0.85]
    m_global = [0.70, 0.60, 0.80, 0.75]  # model "m" as a member of the global ensemble
    m_local = [0.10, 0.20, 0.10, 0.20]  # the same name in another group: must not mix in
    for i in range(4):
        for region, shift in (("whole", 0.0), ("dilated", 0.05)):
            rows.append((f"c{i}", "ens", "ensemble", region, 20, "organ", "1", "dice", ens[i]))
            rows.append(
                (f"c{i}", "m", "global", region, 20, "organ", "1", "dice", m_global[i] + shift)
            )
            rows.append((f"c{i}", "m", "local", region, 20, "organ", "1", "dice", m_local[i]))
    df = pd.DataFrame(rows, columns=cols)
    with pytest.raises(ValueError, match="groups 'global', 'local'.*m@<group>"):
        compare_models(df, "m", "ens", "dice")
    res = compare_models(df, "m@global", "ens", "dice", n_boot=200).set_index("region")
    assert sorted(res.index) == ["dilated", "whole"]
    # by hand: whole differences 0.1 each → 0.1; dilated 0.05 each → 0.05
    assert res.loc["whole", "mean_diff"] == pytest.approx(0.10)
    assert res.loc["dilated", "mean_diff"] == pytest.approx(0.05)
    assert (res["n_cases"] == 4).all() and (res["num_bins"] == 20).all()
    with pytest.raises(ValueError, match="no 'dice' rows in group 'nope'"):
        compare_models(df, "m@nope", "ens", "dice")


def test_bootstrap_ci_needs_two_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([0.3], [0.4]))
    assert all(math.isnan(v) for v in bootstrap_ci([], []))
