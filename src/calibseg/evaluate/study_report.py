"""Tables, paired tests and the self-contained HTML report of a calibration study.

Statistics:
- table: per (loss, calibration) the mean ± std over seeds of each seed's value, where a seed's
  value is the mean over test cases (macro metrics) or the dataset-level value (micro).
- paired tests of each row against its reference (:func:`reference_of`): the baseline (first
  loss, no post-hoc calibration), except that the other nnU-Net rows (``nnunet_hardl1ace``,
  ``nnunet_softl1ace``, with or without temperature, and ``nnunet_dicece`` with temperature)
  are compared with ``nnunet_dicece`` without post-hoc calibration when the study has it — nnU-Net rows differ from bundle rows in the network, preprocessing,
  augmentation and schedule as well as the loss, so only nnU-Net against nnU-Net isolates the
  loss. Per case, the value averaged over seeds (cases are the independent units); two-sided
  Wilcoxon signed-rank test over cases and a paired bootstrap 95 % CI of the mean difference
  (:func:`calibseg.metrics.statistics.paired_comparison`); p-values Holm-adjusted within each
  metric over the compared rows (the family is "every row against its reference on this
  metric").
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

import numpy as np

from calibseg import storage

__all__ = [
    "summary_table",
    "paired_tests",
    "reference_of",
    "holm",
    "write_report",
    "TABLE_METRICS",
    "TEST_METRICS",
    "NNUNET_PREFIX",
    "NNUNET_REFERENCE",
]

TABLE_METRICS: tuple[str, ...] = (
    "dice",
    "hd95",
    "ece",
    "ace",
    "mce",
    "micro_ece",
    "micro_ace",
    "micro_mce",
)
TEST_METRICS: tuple[str, ...] = ("ace", "ece", "mce", "dice", "hd95")
NNUNET_PREFIX = "nnunet_"
#: the nnU-Net row that nnU-Net ACE rows are compared with when the study has it
NNUNET_REFERENCE = "nnunet_dicece"


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order; NaN stays NaN, not counted in the family)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _variants(frame) -> list[tuple[str, str]]:
    """(loss, calibration) pairs in study order: losses as they appear, "none" first."""
    losses = list(dict.fromkeys(frame["loss"]))
    cals = [c for c in ("none", "temperature") if c in set(frame["calibration"])]
    return [(lo, c) for c in cals for lo in losses]


def summary_table(frame) -> Any:
    """DataFrame indexed by (loss, calibration) with ``<metric>_mean``, ``<metric>_std`` (over
    seeds; population std, 0 for one seed) and ``seeds``."""
    import pandas as pd

    per_seed = (
        frame.groupby(["loss", "calibration", "seed", "metric"])["value"]
        .mean()  # macro: mean over cases; micro: the single dataset row
        .unstack("metric")
    )
    rows = []
    for loss, cal in _variants(frame):
        sub = per_seed.loc[(loss, cal)]
        row: dict[str, Any] = {"loss": loss, "calibration": cal, "seeds": len(sub)}
        for m in TABLE_METRICS:
            v = sub[m].to_numpy(dtype=float) if m in sub else np.array([np.nan])
            v = v[np.isfinite(v)]
            row[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{m}_std"] = float(v.std()) if v.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["loss", "calibration"])


def reference_of(frame) -> dict[tuple[str, str], tuple[str, str]]:
    """The row each (loss, calibration) row is compared with: when the study has
    ``nnunet_dicece``, every other nnU-Net row (other nnU-Net losses, and ``nnunet_dicece``
    with temperature) is compared with ``(nnunet_dicece, "none")``; every other row, including
    ``(nnunet_dicece, "none")`` itself, with the baseline (first loss, ``"none"``). The
    baseline row has no reference (absent from the result)."""
    variants = _variants(frame)
    base = variants[0]
    nn_ref = (NNUNET_REFERENCE, "none")
    refs = {}
    for v in variants:
        ref = base
        if v[0].startswith(NNUNET_PREFIX) and v != nn_ref and nn_ref in variants:
            ref = nn_ref
        if v != ref:
            refs[v] = ref
    return refs


def paired_tests(frame, n_boot: int = 10000) -> Any:
    """Each (loss, calibration) row against its reference row (:func:`reference_of`), per
    metric of TEST_METRICS.

    Returns a DataFrame with loss, calibration, reference (its loss), metric, n_cases,
    mean_diff (row − reference), ci_low, ci_high, p_value, p_holm.
    """
    import pandas as pd

    from calibseg.metrics.statistics import paired_comparison

    refs = reference_of(frame)
    cases = frame[frame["case"].astype(str) != ""]
    per_case = cases.groupby(["loss", "calibration", "metric", "case"])["value"].mean()
    rows = []
    for metric in TEST_METRICS:
        block = []
        for v, base in refs.items():
            try:
                a = per_case.loc[(*base, metric)]
                b = per_case.loc[(*v, metric)]
            except KeyError:
                continue
            a, b = a.align(b, join="inner")
            res = paired_comparison(a.to_numpy(), b.to_numpy(), n_boot=n_boot)
            block.append(
                {
                    "loss": v[0],
                    "calibration": v[1],
                    "reference": base[0],
                    "metric": metric,
                    "n_cases": res["n_cases"],
                    "mean_diff": res["mean_diff"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "p_value": res["p_value"],
                }
            )
        adj = holm([r["p_value"] for r in block])
        for r, p in zip(block, adj, strict=True):
            r["p_holm"] = float(p)
        rows += block
    return pd.DataFrame(rows)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curves_png(runs: list[dict]) -> str | None:
    """Validation Dice and ACE against epoch, mean over seeds per loss (shaded: min–max)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_loss: dict[str, list[dict[int, dict]]] = {}
    for r in runs:
        hist = {h["epoch"]: h for h in r.get("history", []) if "dice" in h}
        if hist:
            by_loss.setdefault(r["loss"], []).append(hist)
    if not by_loss:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for loss, hists in by_loss.items():
        epochs = sorted(set.intersection(*(set(h) for h in hists)))
        for ax, key in zip(axes, ("dice", "ace", "mce"), strict=True):
            vals = np.array([[h[e][key] for e in epochs] for h in hists], dtype=float)
            (line,) = ax.plot(epochs, vals.mean(0), label=loss)
            if len(hists) > 1:
                ax.fill_between(epochs, vals.min(0), vals.max(0), alpha=0.2, color=line.get_color())
    for ax, key in zip(axes, ("Dice", "ACE", "MCE"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {key}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "foreground classes, mean over validation cases; line: mean over seeds, band: range"
    )
    fig.tight_layout()
    return _png(fig)


def _fmt(mean: float, std: float, seeds: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else f"{p:.3g}"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td:nth-child(2){text-align:left}
thead th{background:#f2f2f2}.note{color:#555;font-size:.85rem;max-width:60rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs figure{margin:0}
.figs img{width:420px;border:1px solid #ddd}.scroll{overflow-x:auto}figcaption{font-size:.8rem;text-align:center}
img.wide{max-width:100%}
"""


def _table_html(table) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in TABLE_METRICS)
    body = []
    for (loss, cal), row in table.iterrows():
        cells = "".join(
            f"<td>{_fmt(row[f'{m}_mean'], row[f'{m}_std'], int(row['seeds']))}</td>"
            for m in TABLE_METRICS
        )
        body.append(
            f"<tr><td>{html.escape(loss)}</td><td>{html.escape(cal)}</td>"
            f"<td>{int(row['seeds'])}</td>{cells}</tr>"
        )
    return (
        "<div class='scroll'><table id='summary'><thead><tr><th>loss</th><th>post-hoc</th><th>seeds</th>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _tests_html(tests) -> str:
    if tests is None or len(tests) == 0:
        return "<p class='note'>No paired tests (a single row).</p>"
    body = []
    for _, r in tests.iterrows():
        body.append(
            "<tr>"
            f"<td>{html.escape(r['loss'])}</td><td>{html.escape(r['calibration'])}</td>"
            f"<td>{html.escape(r['reference'])}</td>"
            f"<td>{html.escape(r['metric'])}</td><td>{int(r['n_cases'])}</td>"
            f"<td>{r['mean_diff']:+.4f}</td><td>[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]</td>"
            f"<td>{_fmt_p(r['p_value'])}</td><td>{_fmt_p(r['p_holm'])}</td></tr>"
        )
    return (
        "<table id='tests'><thead><tr><th>loss</th><th>post-hoc</th><th>compared with</th>"
        "<th>metric</th><th>cases</th><th>mean diff (row − compared row)</th><th>bootstrap 95 % CI</th><th>Wilcoxon p</th>"
        f"<th>Holm p</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _figures_html(runs: list[dict]) -> str:
    parts = []
    first_seed = min(int(r["seed"]) for r in runs)
    for r in runs:
        if int(r["seed"]) != first_seed:
            continue
        for cal, path in r.get("figures", {}).items():
            try:
                data = base64.b64encode(storage.read_bytes(path)).decode("ascii")
            except (FileNotFoundError, OSError):
                continue
            cap = html.escape(f"{r['loss']} · {cal} · seed {first_seed}")
            parts.append(
                f"<figure><img alt='{cap}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{cap}</figcaption></figure>"
            )
    return f"<div class='figs'>{''.join(parts)}</div>"


def _temperatures_html(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        fit = r.get("temperature")
        if not fit:
            continue
        t = fit["temperature"]
        t_txt = ", ".join(f"{x:.3f}" for x in t) if isinstance(t, list) else f"{t:.3f}"
        rows.append(
            f"<tr><td>{html.escape(r['loss'])}</td><td>{int(r['seed'])}</td><td>{t_txt}</td>"
            f"<td>{fit['val_nll_before']:.4f}</td><td>{fit['val_nll_after']:.4f}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Fitted temperatures</h2><table id='temperatures'><thead><tr><th>loss</th>"
        "<th>seed</th><th>T</th><th>validation NLL before</th><th>after</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _nnunet_note(frame, baseline: str) -> str:
    """What an nnU-Net row is compared with, and why it is not a loss-only comparison with a
    bundle row ("" for a study without nnU-Net losses)."""
    losses = list(dict.fromkeys(frame["loss"]))
    nn = [lo for lo in losses if lo.startswith(NNUNET_PREFIX)]
    if not nn:
        return ""
    if NNUNET_REFERENCE in losses:
        rule = (
            f"The other nnU-Net rows are compared with {NNUNET_REFERENCE} (nnU-Net's own "
            f"Dice+CE, no post-hoc calibration), which isolates the loss; {NNUNET_REFERENCE} "
            f"itself is compared with {html.escape(baseline)}."
        )
    else:
        rule = (
            f"The study has no {NNUNET_REFERENCE}, so the nnU-Net rows are compared with "
            f"{html.escape(baseline)}: add {NNUNET_REFERENCE} to compare the losses within "
            "nnU-Net."
        )
    return (
        "<p class='note' id='nnunet-note'><b>nnU-Net rows</b> ("
        f"{html.escape(', '.join(nn))}) are trained by nnU-Net's own pipeline on the same cases "
        "and splits: its planned network, resampling and normalisation, data augmentation, "
        "patch sampling, deep supervision, learning-rate schedule and test-time mirroring all "
        "differ from the bundles', so an nnU-Net row differs from a bundle row in more than "
        "the loss. Early stopping and the checkpoint used follow nnU-Net's EMA validation "
        "pseudo-Dice (patience in epochs); its per-epoch pseudo-Dice is in study.json, not in "
        f"the validation curves below. {rule}</p>"
    )


def write_report(out: str, frame, runs: list[dict], settings: Any) -> str:
    """Write ``<out>/report.html`` (self-contained: figures embedded as PNG data) and
    ``<out>/summary.csv`` / ``<out>/tests.csv``; return the report's path."""
    table = summary_table(frame)
    tests = paired_tests(frame) if len(table) > 1 else None
    for name, df in (("summary.csv", table.reset_index()), ("tests.csv", tests)):
        if df is not None:
            with storage.local_output(storage.join(out, name)) as tmp:
                df.to_csv(tmp, index=False)
    curves = _curves_png(runs)
    losses = ", ".join(dict.fromkeys(frame["loss"]))
    seeds = sorted({int(s) for s in frame["seed"]})
    n_cases = frame[frame["case"].astype(str) != ""]["case"].nunique()
    baseline = _variants(frame)[0][0]
    nn_note = _nnunet_note(frame, baseline)
    patience = int(getattr(settings, "patience", 0) or 0)
    stopping = (
        f"with early stopping on the validation split (patience {patience} validations)"
        if patience
        else "for the bundle's full schedule (no early stopping)"
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>calibseg calibration study</title>
<style>{_CSS}</style></head><body>
<h1>Calibration study: {html.escape(str(getattr(settings, "data", "")))}</h1>
<p class="note">Losses: {html.escape(losses)}; seeds {seeds}; {n_cases} test cases.
Each model is trained {stopping}; its best-validation-Dice checkpoint is evaluated on the test
split, and also after temperature scaling fitted by NLL on its validation predictions ("post-hoc:
temperature"). Metrics are over foreground classes: Dice, HD95 (mm), and macro ECE/ACE/MCE
(per case, then averaged) and micro ECE/ACE/MCE (all test voxels pooled).</p>
<h2>Results (mean ± std over seeds)</h2>
{_table_html(table)}
{nn_note}
<h2>Paired tests against {html.escape(baseline)} (no post-hoc calibration)</h2>
<p class="note">Per case, values are averaged over seeds; two-sided Wilcoxon signed-rank test
over cases, paired bootstrap 95 % CI of the mean difference (10,000 resamples), p-values
Holm-adjusted within each metric. Each row is compared with the row named in "compared with"
(without post-hoc calibration).</p>
{_tests_html(tests)}
{_temperatures_html(runs)}
<h2>Validation curves</h2>
{f'<img class="wide" alt="validation curves" src="data:image/png;base64,{curves}">' if curves else '<p class="note">No validation history.</p>'}
<h2>Dataset reliability histograms (test split)</h2>
{_figures_html(runs)}
</body></html>
"""
    path = storage.join(out, "report.html")
    storage.write_text(path, doc)
    return path if storage.is_remote(path) else os.path.abspath(path)
