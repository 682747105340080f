"""Paired statistics across models over cases (never pooling case × model rows).

For a metric, each model contributes one value per case; models are compared on the cases both
have (paired). :func:`paired_comparison` gives the mean difference ``b − a``, a paired bootstrap
confidence interval (cases resampled with replacement, the same resample for both models) and
the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) on the per-case
differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "wilcoxon_signed_rank", "paired_comparison", "compare_models"]


def bootstrap_ci(
    diff, n_boot: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-case paired differences ``[N]``.

    Cases are resampled with replacement (one vectorised ``[n_boot, N]`` draw). NaN for N = 0.
    """
    d = np.asarray(diff, dtype=np.float64).reshape(-1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(int(n_boot), d.size))
    means = d[idx].mean(1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilcoxon_signed_rank(a, b) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired values ``a``, ``b`` ``[N]``:
    ``(statistic, p_value)``; NaN when there are fewer than 2 cases or all differences are 0."""
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if x.size < 2 or np.all(x == 0):
        return float("nan"), float("nan")
    res = wilcoxon(x, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def paired_comparison(
    a, b, n_boot: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of per-case values ``a``, ``b`` (same case order, NaN pairs dropped).

    Returns ``n_cases, mean_a, mean_b, mean_diff (b − a), ci_low, ci_high, wilcoxon_stat,
    p_value``.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same number of cases, got {x.size} and {y.size}.")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    lo, hi = bootstrap_ci(y - x, n_boot, confidence, seed)
    stat, p = wilcoxon_signed_rank(x, y)
    nan = float("nan")
    return {
        "n_cases": int(x.size),
        "mean_a": float(x.mean()) if x.size else nan,
        "mean_b": float(y.mean()) if y.size else nan,
        "mean_diff": float((y - x).mean()) if x.size else nan,
        "ci_low": lo,
        "ci_high": hi,
        "wilcoxon_stat": stat,
        "p_value": p,
    }


def _model_values(df, models: Sequence[str], metric: str):
    """Per (case, class, rater) value of a model, or the mean over several models (member mean)."""
    sub = df[(df["metric"] == metric) & (df["model"].isin(list(models)))]
    missing = sorted(set(models) - set(sub["model"].unique()))
    if missing:
        known = sorted(df["model"].unique())
        raise ValueError(
            f"no {metric!r} values for model(s) {', '.join(missing)}; models in the table: "
            f"{', '.join(map(str, known))}."
        )
    keys = ["case", "class", "rater"]
    # the mean over models is taken per case first, so every case stays one observation
    return sub.groupby(keys, dropna=False)["value"].mean()


def compare_models(
    df,
    a: str | Sequence[str],
    b: str | Sequence[str],
    metric: str,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
):
    """Paired comparison of models ``a`` and ``b`` on ``metric`` for every (class, rater).

    ``df`` is the tidy metrics table (columns case, model, class, rater, metric, value). A list
    of models for ``a`` or ``b`` is averaged per case first (e.g. the mean of the ensemble's
    members). Returns a pandas DataFrame with one row per (class, rater) and the columns of
    :func:`paired_comparison`.
    """
    import pandas as pd

    need = {"case", "model", "class", "rater", "metric", "value"}
    if not need.issubset(df.columns):
        raise ValueError(f"metrics table lacks columns {sorted(need - set(df.columns))}.")
    df = df[df["case"] != "ALL"]
    ma = [a] if isinstance(a, str) else list(a)
    mb = [b] if isinstance(b, str) else list(b)
    va = _model_values(df, ma, metric).rename("a")
    vb = _model_values(df, mb, metric).rename("b")
    joined = pd.concat([va, vb], axis=1, join="inner").reset_index()
    if joined.empty:
        raise ValueError(f"models {ma} and {mb} share no case with metric {metric!r}.")
    rows = []
    for (cls, rater), g in joined.groupby(["class", "rater"], sort=True):
        res = paired_comparison(g["a"].to_numpy(), g["b"].to_numpy(), n_boot, confidence, seed)
        rows.append({"metric": metric, "class": cls, "rater": rater, **res})
    return pd.DataFrame(rows)
