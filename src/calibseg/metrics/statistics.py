"""Paired statistics across models over cases (never pooling case × model rows).

For a metric, each model contributes one value per case; models are compared on the cases both
have (paired). :func:`paired_comparison` gives the mean difference ``b − a``, a paired bootstrap
confidence interval (``scipy.stats.bootstrap(paired=True)``: cases resampled with replacement,
the same resample for both models) and
the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) on the per-case
differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap, wilcoxon

__all__ = ["bootstrap_ci", "wilcoxon_signed_rank", "paired_comparison", "compare_models"]


def bootstrap_ci(
    a, b, n_boot: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Paired percentile bootstrap CI of the mean difference ``b − a`` of per-case values
    ``a``, ``b`` ``[N]`` (same case order).

    ``scipy.stats.bootstrap(paired=True)``: cases are resampled with replacement, the same
    resample for both models. NaN for fewer than 2 cases (no interval).
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same number of cases, got {x.size} and {y.size}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if x.size < 2:
        return float("nan"), float("nan")
    res = bootstrap(
        (x, y),
        _mean_difference,
        paired=True,
        n_resamples=int(n_boot),
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),  # `rng` needs scipy >= 1.15
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y - x, axis=axis)


def wilcoxon_signed_rank(a, b) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired values ``a``, ``b`` ``[N]``:
    ``(statistic, p_value)``; NaN when there are fewer than 2 cases or all differences are 0."""
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
    lo, hi = bootstrap_ci(x, y, n_boot, confidence, seed)
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


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``"model"`` → (model, None); ``"model@group"`` → (model, group)."""
    name, sep, group = str(spec).rpartition("@")
    return (name, group) if sep else (str(spec), None)


def _model_values(df, models: Sequence[str], metric: str, strata: list[str]):
    """Per (case, *strata, class, rater) value of a model, or the mean over several models
    (member mean). A model is ``"name"`` or ``"name@group"``; a name with rows in several groups
    must name the group (rows of different groups are never averaged together)."""
    import pandas as pd

    rows = df[df["metric"] == metric]
    parts = []
    for spec in models:
        name, group = _split_spec(spec)
        sub = rows[rows["model"].astype(str) == name]
        if sub.empty:
            known = sorted(df["model"].astype(str).unique())
            raise ValueError(
                f"no {metric!r} values for model(s) {name}; models in the table: "
                f"{', '.join(known)}."
            )
        groups = sorted(sub["group"].unique())
        if group is None and len(groups) > 1:
            raise ValueError(
                f"model {name!r} has {metric!r} rows in groups {', '.join(map(repr, groups))}; "
                f"name one as {name}@<group>."
            )
        if group is not None:
            sub = sub[sub["group"] == group]
            if sub.empty:
                raise ValueError(
                    f"model {name!r} has no {metric!r} rows in group {group!r} (groups: "
                    f"{', '.join(map(repr, groups))})."
                )
        parts.append(sub)
    keys = ["case", *strata, "class", "rater"]
    # the mean over models is taken per case first, so every case stays one observation
    return pd.concat(parts).groupby(keys, dropna=False)["value"].mean()


def _settings(values, strata: list[str]) -> set[tuple]:
    """The distinct (region, num_bins, …) combinations in the index of ``values``."""
    return set(values.index.droplevel(["case", "class", "rater"]).unique().to_list())


def _describe(settings: set[tuple], strata: list[str]) -> str:
    one = (s if isinstance(s, tuple) else (s,) for s in sorted(settings, key=str))
    return "; ".join(", ".join(f"{k}={v}" for k, v in zip(strata, s, strict=True)) for s in one)


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

    ``df`` is the tidy metrics table (columns case, model, group, class, rater, metric, value;
    optional region and num_bins). A model is named ``"name"`` or ``"name@group"``; a name with
    rows in several groups must say which (``ValueError`` otherwise). A list of models for
    ``a`` or ``b`` is averaged per case first (e.g. the mean of the ensemble's members). Tables
    holding several regions or numbers of bins are compared within each, never across.
    Returns a pandas DataFrame with one row per (region, num_bins, class, rater) — the columns
    present in ``df`` — and the columns of :func:`paired_comparison`.
    """
    import pandas as pd

    need = {"case", "model", "class", "rater", "metric", "value"}
    if not need.issubset(df.columns):
        raise ValueError(f"metrics table lacks columns {sorted(need - set(df.columns))}.")
    df = df[df["case"] != "ALL"]
    group = df["group"] if "group" in df.columns else pd.Series("", index=df.index)
    df = df.assign(group=group.fillna("").astype(str))
    strata = [k for k in ("region", "num_bins") if k in df.columns]
    ma = [a] if isinstance(a, str) else list(a)
    mb = [b] if isinstance(b, str) else list(b)
    va = _model_values(df, ma, metric, strata).rename("a")
    vb = _model_values(df, mb, metric, strata).rename("b")
    joined = pd.concat([va, vb], axis=1, join="inner").reset_index()
    if joined.empty and strata:
        sa, sb = _settings(va, strata), _settings(vb, strata)
        if not sa & sb:
            raise ValueError(
                f"models {ma} ({_describe(sa, strata)}) and {mb} ({_describe(sb, strata)}) were "
                f"computed with different {' / '.join(strata)}: compute both alike to compare."
            )
    if joined.empty:
        raise ValueError(f"models {ma} and {mb} share no case with metric {metric!r}.")
    rows = []
    by = [*strata, "class", "rater"]
    for key, g in joined.groupby(by, sort=True, dropna=False):
        res = paired_comparison(g["a"].to_numpy(), g["b"].to_numpy(), n_boot, confidence, seed)
        rows.append({"metric": metric, **dict(zip(by, key, strict=True)), **res})
    return pd.DataFrame(rows)
