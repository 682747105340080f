"""Reliability diagrams (one per case) and dataset reliability histograms (one per dataset).

Both take per-case :class:`~calibseg.binning.BinStats` ``[N, C, K]``; the numbers shown come
from the same statistics as the metrics. Figures are built with the object-oriented
matplotlib API (no pyplot state, headless) and written atomically through
:func:`calibseg.storage.local_output`, so ``out_dir`` may be an ``s3://`` URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from calibseg import storage
from calibseg.binning import BinStats
from calibseg.metrics.calibration import ERROR_NAMES
from calibseg.metrics.reliability import calculate_heatmap_from_bins

__all__ = ["draw_case_reliability_diagrams", "draw_dataset_reliability_diagrams"]

_FORMATS = ("png", "pdf")
_BAR = "#3b6ea8"
_GAP = "#d1495b"
_CURVE = "#ff7f0e"
_DIAGONAL = "#444444"


def _check(
    stats: Any,
    out_dir: Any,
    class_names: Sequence[str] | None,
    fmt: str,
    case_names: Sequence[str] | None = None,
) -> list[str]:
    if not isinstance(stats, BinStats):
        raise TypeError(f"stats must be a BinStats [N, C, K], got {type(stats).__name__}.")
    if stats.weight.ndim != 3 or stats.shape[0] == 0:
        raise ValueError(f"stats must have shape [N, C, K] with N >= 1, got {stats.shape}.")
    if out_dir is None or str(out_dir) == "":
        raise ValueError("an output folder is needed to draw figures: pass out_dir.")
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, got {fmt!r}.")
    n, c, _ = stats.shape
    if case_names is not None and len(case_names) != n:
        raise ValueError(f"{len(case_names)} case_names given for {n} cases.")
    if class_names is None:
        return [f"class {i}" for i in range(c)]
    if isinstance(class_names, str) or len(class_names) != c:
        got = 1 if isinstance(class_names, str) else len(class_names)
        raise ValueError(f"{got} class_names given for statistics with {c} classes.")
    return [str(x) for x in class_names]


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", str(name)).strip("_") or "case"


def _panel_size(opts: dict[str, Any], n_panels: int, rows: float) -> tuple[float, float]:
    if opts.get("figsize") is not None:
        w, h = opts["figsize"]
        return float(w), float(h)
    pw, ph = opts.get("panel_size", (3.4, 3.4))
    return pw * n_panels + 0.4, ph * rows + 1.2


def _save(fig: Any, path: str, fmt: str, savefig_kwargs: dict[str, Any] | None) -> str:
    kw = {"dpi": 120, "facecolor": "white"}
    kw.update(savefig_kwargs or {})
    with storage.local_output(path) as tmp:
        fig.savefig(tmp, format=fmt, **kw)
    return path


def _rc(rc_params: dict[str, Any] | None):
    import matplotlib

    base = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}
    base.update(rc_params or {})
    return matplotlib.rc_context(base) if base else nullcontext()


def _errors_text(err: dict[str, float], prefix: str = "") -> str:
    return "\n".join(f"{prefix}{k.upper()} {err[k]:.3f}" for k in ERROR_NAMES)


def _reliability_axes(ax: Any, k: int) -> np.ndarray:
    centres = (np.arange(k) + 0.5) / k
    ax.plot([0, 1], [0, 1], ls="--", lw=1.0, color=_DIAGONAL, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.set_axisbelow(True)
    return centres


def _count_axes(ax: Any, counts: np.ndarray, k: int, ylabel: str) -> None:
    centres = (np.arange(k) + 0.5) / k
    shown = np.where(counts > 0, counts, np.nan)
    ax.bar(centres, shown, width=1.0 / k, color="#8c8c8c", edgecolor="white", lw=0.5)
    if np.nanmax(np.append(shown, 0)) > 0:
        from matplotlib.ticker import LogLocator, NullLocator

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=4))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", lw=0.4, alpha=0.4)


def _panels(
    mean_p: torch.Tensor, mean_gt: torch.Tensor, counts: torch.Tensor, names: list[str], avg: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per-panel curves ``[P, K]`` (classes, plus their average when ``avg``)."""
    if avg:
        mean_p = torch.cat([mean_p, mean_p.nanmean(0, keepdim=True)])
        mean_gt = torch.cat([mean_gt, mean_gt.nanmean(0, keepdim=True)])
        counts = torch.cat([counts, counts.sum(0, keepdim=True)])
        names = [*names, "average over classes"]
    return mean_p.numpy(), mean_gt.numpy(), counts.numpy(), names


def draw_case_reliability_diagrams(
    stats: BinStats,
    out_dir: str | os.PathLike,
    case_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    fmt: str = "png",
    **opts: Any,
) -> list[str]:
    """One reliability diagram per case: ``<out_dir>/<case>_reliability_diagram.<fmt>``.

    One panel per class: bars of accuracy (mean target) per confidence bin against the
    diagonal, the gap to the bin's mean confidence shaded, ECE/ACE/MCE printed, and (unless
    ``show_counts=False``) the voxel count per bin beneath on a log scale. Empty bins are
    left blank.

    Args:
        stats: per-case statistics ``[N, C, K]``.
        out_dir: output folder or URL (created if needed).
        case_names: ``N`` names, used in titles and file names.
        class_names: ``C`` names (default ``class <i>``).
        fmt: ``"png"`` or ``"pdf"``.
        **opts: ``average_over_classes`` (extra panel, default False), ``show_counts``
            (True), ``figsize`` (whole figure) or ``panel_size`` ((3.4, 3.4) inches),
            ``color``, ``gap_color``, ``rc_params`` (matplotlib rc dict), ``savefig_kwargs``
            (e.g. ``{"dpi": 200}``), ``title`` (format string with ``{case}``).

    Returns:
        Paths written, in case order.
    """
    names = _check(stats, out_dir, class_names, fmt, case_names)
    _check_opts(opts, _CASE_OPTS)
    from matplotlib.figure import Figure

    mean_p, mean_gt, counts = (t.detach().cpu() for t in stats.means())
    err = {k: v.cpu() for k, v in stats.errors().items()}
    avg = bool(opts.get("average_over_classes", False))
    show_counts = bool(opts.get("show_counts", True))
    color, gap_color = opts.get("color", _BAR), opts.get("gap_color", _GAP)
    title = opts.get("title", "{case}")
    k = stats.num_bins
    storage.makedirs(out_dir)
    written: list[str] = []
    with _rc(opts.get("rc_params")):
        for i, case in enumerate(case_names):
            mp, mg, cnt, panel_names = _panels(mean_p[i], mean_gt[i], counts[i], names, avg)
            e = {key: v[i] for key, v in err.items()}
            if avg:
                e = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in e.items()}
            n_panels = len(panel_names)
            rows = 1.45 if show_counts else 1.0
            fig = Figure(figsize=_panel_size(opts, n_panels, rows), layout="constrained")
            if show_counts:
                gs = fig.add_gridspec(2, n_panels, height_ratios=[3, 1.2])
            else:
                gs = fig.add_gridspec(1, n_panels)
            for j, pname in enumerate(panel_names):
                ax = fig.add_subplot(gs[0, j])
                centres = _reliability_axes(ax, k)
                ok = ~np.isnan(mg[j])
                ax.bar(
                    centres[ok],
                    mg[j][ok],
                    width=1.0 / k,
                    color=color,
                    edgecolor="white",
                    lw=0.5,
                    label="accuracy",
                )
                ax.bar(
                    centres[ok],
                    (mp[j] - mg[j])[ok],
                    bottom=mg[j][ok],
                    width=1.0 / k,
                    color=gap_color,
                    alpha=0.35,
                    edgecolor=gap_color,
                    lw=0.6,
                    hatch="///",
                    label="gap to confidence",
                )
                vals = {key: float(e[key][j]) for key in ERROR_NAMES}
                ax.text(
                    0.04,
                    0.96,
                    _errors_text(vals) if ok.any() else "no voxels",
                    transform=ax.transAxes,
                    va="top",
                    ha="left",
                    family="monospace",
                    fontsize="small",
                    bbox={
                        "boxstyle": "round,pad=0.3",
                        "fc": "white",
                        "ec": "#bbbbbb",
                        "alpha": 0.9,
                    },
                )
                absent = j < len(names) and bool(stats.sum_gt[i, j].sum() <= 0)
                ax.set_title(f"{pname}\n(absent from ground truth)" if absent else pname)
                if j == 0:
                    ax.set_ylabel("accuracy (mean target)")
                    fig.legend(loc="outside lower center", ncols=3, frameon=False)
                else:
                    ax.tick_params(labelleft=False)
                if show_counts:
                    ax.tick_params(labelbottom=False)
                    _count_axes(fig.add_subplot(gs[1, j], sharex=ax), cnt[j], k, "voxels")
                    if j:
                        fig.axes[-1].set_ylabel("")
                else:
                    ax.set_xlabel("confidence")
            fig.suptitle(title.format(case=case), fontsize="large", fontweight="bold")
            path = storage.join(str(out_dir), f"{_safe_name(case)}_reliability_diagram.{fmt}")
            written.append(_save(fig, path, fmt, opts.get("savefig_kwargs")))
    return written


def draw_dataset_reliability_diagrams(
    stats: BinStats,
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    fmt: str = "png",
    **opts: Any,
) -> list[str]:
    """The dataset reliability figure: ``<out_dir>/dataset_reliability_diagram.<fmt>``.

    One panel per class: the dataset reliability histogram as a heat map (x: confidence
    bin, y: accuracy bin, colour: number of cases whose accuracy in that confidence bin falls
    in that accuracy bin; :func:`~calibseg.metrics.calculate_heatmap_from_bins`) with the
    diagonal; the pooled (micro) reliability curve over all voxels of the dataset on top
    (``show_aggregate``); micro and macro ECE in the title; the pooled voxel counts per bin
    beneath (``show_counts``).

    Args:
        stats: per-case statistics ``[N, C, K]``.
        out_dir: output folder or URL (created if needed).
        class_names: ``C`` names (default ``class <i>``).
        fmt: ``"png"`` or ``"pdf"``.
        **opts: ``average_over_classes`` (extra panel with the class-mean heat map, default
            False), ``show_aggregate`` (True), ``show_counts`` (True), ``cmap``
            ("viridis"), ``figsize`` or ``panel_size``, ``rc_params``, ``savefig_kwargs``,
            ``title``.

    Returns:
        ``[path]`` of the figure written.
    """
    names = _check(stats, out_dir, class_names, fmt)
    _check_opts(opts, _DATASET_OPTS)
    import matplotlib
    from matplotlib.figure import Figure

    k = stats.num_bins
    mean_gt = stats.means()[1].detach().cpu()
    heat = calculate_heatmap_from_bins(mean_gt, k).to(torch.float64)
    total = stats.total()
    amp, amg, acnt = (t[0].detach().cpu() for t in total.means())
    micro = {key: v[0].cpu() for key, v in total.errors().items()}
    macro = {key: v.cpu().nanmean(0) for key, v in stats.errors().items()}
    avg = bool(opts.get("average_over_classes", False))
    if avg:
        heat = torch.cat([heat, heat.mean(0, keepdim=True)])
        micro = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in micro.items()}
        macro = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in macro.items()}
    mp, mg, cnt, panel_names = _panels(amp, amg, acnt, names, avg)
    heat_np = heat.numpy()
    show_counts = bool(opts.get("show_counts", True))
    show_agg = bool(opts.get("show_aggregate", True))
    cmap = matplotlib.colormaps[opts.get("cmap", "viridis")].with_extremes(bad="#f4f4f4")
    n_cases = stats.shape[0]
    n_panels = len(panel_names)
    storage.makedirs(out_dir)
    with _rc(opts.get("rc_params")):
        rows = 1.45 if show_counts else 1.0
        fig = Figure(figsize=_panel_size(opts, n_panels, rows), layout="constrained")
        if show_counts:
            gs = fig.add_gridspec(2, n_panels, height_ratios=[3, 1.2])
        else:
            gs = fig.add_gridspec(1, n_panels)
        vmax = max(float(heat_np.max()), 1.0)
        for j, pname in enumerate(panel_names):
            ax = fig.add_subplot(gs[0, j])
            masked = np.ma.masked_where(heat_np[j] <= 0, heat_np[j])
            im = ax.imshow(
                masked,
                extent=(0, 1, 0, 1),
                origin="upper",
                cmap=cmap,
                vmin=0,
                vmax=vmax,
                interpolation="nearest",
                aspect="auto",
            )
            ax.plot([0, 1], [0, 1], ls="--", lw=1.0, color=_DIAGONAL, label="perfect calibration")
            ok = ~np.isnan(mg[j])
            if show_agg and ok.any():
                ax.plot(
                    mp[j][ok],
                    mg[j][ok],
                    "o-",
                    color=_CURVE,
                    ms=3,
                    lw=1.4,
                    mec="white",
                    mew=0.5,
                    label="dataset (pooled voxels)",
                )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(
                f"{pname}\nECE micro {float(micro['ece'][j]):.3f} · "
                f"macro {float(macro['ece'][j]):.3f}"
            )
            if j == 0:
                ax.set_ylabel("accuracy (mean target)")
                fig.legend(loc="outside lower center", ncols=2, frameon=False)
            else:
                ax.tick_params(labelleft=False)
            if show_counts:
                ax.tick_params(labelbottom=False)
                cax = fig.add_subplot(gs[1, j], sharex=ax)
                _count_axes(cax, cnt[j], k, "voxels" if j == 0 else "")
            else:
                ax.set_xlabel("confidence")
        from matplotlib.ticker import MaxNLocator

        cbar = fig.colorbar(im, ax=fig.axes[:: 2 if show_counts else 1], shrink=0.8, label="cases")
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
        title = opts.get("title", "Dataset reliability histogram ({n} cases)")
        fig.suptitle(title.format(n=n_cases), fontsize="large", fontweight="bold")
        path = storage.join(str(out_dir), f"dataset_reliability_diagram.{fmt}")
        return [_save(fig, path, fmt, opts.get("savefig_kwargs"))]


_COMMON_OPTS = {
    "average_over_classes",
    "show_counts",
    "figsize",
    "panel_size",
    "rc_params",
    "savefig_kwargs",
    "title",
}
_CASE_OPTS = _COMMON_OPTS | {"color", "gap_color"}
_DATASET_OPTS = _COMMON_OPTS | {"cmap", "show_aggregate"}


def _check_opts(opts: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise TypeError(
            f"unknown drawing option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}."
        )
