"""Reliability diagrams (one per case) and dataset reliability histograms (one per dataset).

Both take per-case :class:`~calibseg.binning.BinStats` ``[N, C, K]`` (the numbers shown come
from the same statistics as the metrics) or the arrays of the paper's functions, with the
paper's arguments in the paper's order. Figures are built with the object-oriented
matplotlib API (no pyplot state, headless) and written atomically through
:func:`calibseg.storage.local_output`, so ``output_dir`` may be an ``s3://`` URL. Public home:
:mod:`calibseg.visualize`.
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
from calibseg.metrics.reliability import calculate_heatmap_from_bins, stats_from_binning_tensor

__all__ = ["draw_case_reliability_diagrams", "draw_dataset_reliability_diagrams"]

_FORMATS = ("png", "pdf")
_BAR = "#3b6ea8"
_GAP = "#d1495b"
_CURVE = "#ff7f0e"
_DIAGONAL = "#444444"


def _as_stats(data: Any, what: str) -> BinStats:
    """BinStats ``[N, C, K]``, or the paper's binning data ``[N, C, 3, K]`` (mean_p, mean_gt,
    counts; array or tensor) converted to BinStats."""
    if isinstance(data, BinStats):
        return data
    if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 4 and data.shape[2] == 3:
        return stats_from_binning_tensor(torch.as_tensor(np.asarray(data)))
    shape = tuple(data.shape) if hasattr(data, "shape") else type(data).__name__
    raise TypeError(
        f"{what} must be a BinStats [N, C, K] or binning data [N, C, 3, K], got {shape}."
    )


def _check(
    stats: BinStats | None,
    out_dir: Any,
    class_names: Sequence[str] | None,
    fmt: str,
    case_names: Sequence[str] | None = None,
    n_classes: int | None = None,
) -> list[str]:
    if stats is not None and (stats.weight.ndim != 3 or stats.shape[0] == 0):
        raise ValueError(f"stats must have shape [N, C, K] with N >= 1, got {stats.shape}.")
    if out_dir is None or str(out_dir) == "":
        raise ValueError("an output folder is needed to draw figures: pass output_dir.")
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, got {fmt!r}.")
    c = n_classes if stats is None else stats.shape[1]
    if stats is not None and case_names is not None and len(case_names) != stats.shape[0]:
        raise ValueError(f"{len(case_names)} case_names given for {stats.shape[0]} cases.")
    if class_names is None:
        return [f"class {i}" for i in range(c)]
    if isinstance(class_names, str) or len(class_names) != c:
        got = 1 if isinstance(class_names, str) else len(class_names)
        raise ValueError(f"{got} class_names given for statistics with {c} classes.")
    return [str(x) for x in class_names]


def _format(fmt: str | None, savefig_kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(format, savefig options without ``format``): ``fmt``, else ``savefig_kwargs["format"]``
    as in the paper's code, else png."""
    save = dict(savefig_kwargs or {})
    saved = save.pop("format", None)
    return str(fmt or saved or "png"), save


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", str(name)).strip("_") or "case"


def _panel_size(figsize: Sequence[float] | None, n_panels: int, rows: float) -> tuple[float, float]:
    """Figure size from the size of one panel (the paper's ``figsize``; default 3.4 in)."""
    pw, ph = (3.4, 3.4) if figsize is None else (float(figsize[0]), float(figsize[1]))
    return pw * n_panels + 0.4, ph * rows + 1.2


def _figure(figsize: Sequence[float] | None, n_panels: int, show_counts: bool) -> tuple[Any, Any]:
    """A figure of ``n_panels`` panels side by side (with a count row beneath them when
    ``show_counts``) and its grid spec."""
    from matplotlib.figure import Figure

    rows = 1.45 if show_counts else 1.0
    fig = Figure(figsize=_panel_size(figsize, n_panels, rows), layout="constrained")
    if show_counts:
        return fig, fig.add_gridspec(2, n_panels, height_ratios=[3, 1.2])
    return fig, fig.add_gridspec(1, n_panels)


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


def _errors_text(err: dict[str, float], shown: Sequence[str] = ERROR_NAMES) -> str:
    return "\n".join(f"{k.upper()} {err[k]:.3f}" for k in ERROR_NAMES if k in shown)


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


def _finish_panel(
    fig: Any, gs: Any, ax: Any, j: int, counts: np.ndarray | None, k: int, legend_cols: int
) -> None:
    """Labels of panel ``j`` (the first carries the y label and the legend) and, with
    ``counts``, the voxel-count axes beneath it."""
    if j == 0:
        ax.set_ylabel("accuracy (mean target)")
        fig.legend(loc="outside lower center", ncols=legend_cols, frameon=False)
    else:
        ax.tick_params(labelleft=False)
    if counts is None:
        ax.set_xlabel("confidence")
        return
    ax.tick_params(labelbottom=False)
    _count_axes(fig.add_subplot(gs[1, j], sharex=ax), counts, k, "voxels" if j == 0 else "")


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
    binning_data: BinStats | np.ndarray | torch.Tensor,
    output_dir: str | os.PathLike,
    figsize: Sequence[float] | None = None,
    case_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    print_ece: bool = True,
    print_ace: bool = True,
    print_mce: bool = True,
    draw_histograms: bool = True,
    savefig_kwargs: dict[str, Any] | None = None,
    rc_params: dict[str, Any] | None = None,
    *,
    fmt: str | None = None,
    **opts: Any,
) -> list[str]:
    """One reliability diagram per case: ``<output_dir>/<case>_reliability_diagram.<fmt>``.

    One panel per class: bars of accuracy (mean target) per confidence bin against the
    diagonal, the gap to the bin's mean confidence shaded, the chosen errors printed, and
    (``draw_histograms``) the voxel count per bin beneath on a log scale. Empty bins are
    left blank. The arguments are the paper's, in its order.

    Args:
        binning_data: per-case statistics: BinStats ``[N, C, K]`` or the paper's binning data
            ``[N, C, 3, K]`` (mean_p, mean_gt, counts; numpy or torch).
        output_dir: output folder or URL (created if needed).
        figsize: size of one panel in inches (default 3.4 × 3.4).
        case_names: ``N`` names, used in titles and file names (default ``case1 …``).
        class_names: ``C`` names (default ``class <i>``).
        print_ece, print_ace, print_mce: print that error in each panel.
        draw_histograms: voxel counts per bin beneath the panels.
        savefig_kwargs: options of ``savefig`` (e.g. ``{"dpi": 200}``); ``format`` picks the
            file format as in the paper's code.
        rc_params: matplotlib rc settings for these figures.
        fmt: ``"png"`` or ``"pdf"`` (default: ``savefig_kwargs["format"]``, else png).
        **opts: ``average_over_classes`` (extra panel, default False), ``color``,
            ``gap_color``, ``title`` (format string with ``{case}``).

    Returns:
        Paths written, in case order.

    Raises:
        TypeError: other input than BinStats / ``[N, C, 3, K]``; unknown option.
        ValueError: no ``output_dir``; names that do not match the data; a format other than
            png/pdf.
    """
    stats = _as_stats(binning_data, "binning_data")
    fmt, save = _format(fmt, savefig_kwargs)
    if case_names is None:
        case_names = [f"case{i + 1}" for i in range(stats.shape[0])]
    names = _check(stats, output_dir, class_names, fmt, case_names)
    _check_opts(opts, _CASE_OPTS)

    shown = [k for k, on in zip(ERROR_NAMES, (print_ece, print_ace, print_mce), strict=True) if on]
    mean_p, mean_gt, counts = (t.detach().cpu() for t in stats.means())
    err = {k: v.cpu() for k, v in stats.errors().items()}
    avg = bool(opts.get("average_over_classes", False))
    show_counts = bool(draw_histograms)
    color, gap_color = opts.get("color", _BAR), opts.get("gap_color", _GAP)
    title = opts.get("title", "{case}")
    k = stats.num_bins
    storage.makedirs(output_dir)
    written: list[str] = []
    with _rc(rc_params):
        for i, case in enumerate(case_names):
            mp, mg, cnt, panel_names = _panels(mean_p[i], mean_gt[i], counts[i], names, avg)
            e = {key: v[i] for key, v in err.items()}
            if avg:
                e = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in e.items()}
            fig, gs = _figure(figsize, len(panel_names), show_counts)
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
                    _errors_text(vals, shown) if ok.any() else "no voxels",
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
                _finish_panel(fig, gs, ax, j, cnt[j] if show_counts else None, k, legend_cols=3)
            fig.suptitle(title.format(case=case), fontsize="large", fontweight="bold")
            path = storage.join(str(output_dir), f"{_safe_name(case)}_reliability_diagram.{fmt}")
            written.append(_save(fig, path, fmt, save))
    return written


def draw_dataset_reliability_diagrams(
    heatmap: BinStats | np.ndarray | torch.Tensor,
    output_dir: str | os.PathLike,
    figsize: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    draw_histograms: bool = True,
    binning_data: np.ndarray | torch.Tensor | None = None,
    imshow_kwargs: dict[str, Any] | None = None,
    savefig_kwargs: dict[str, Any] | None = None,
    rc_params: dict[str, Any] | None = None,
    *,
    fmt: str | None = None,
    **opts: Any,
) -> list[str]:
    """The dataset reliability figure: ``<output_dir>/dataset_reliability_diagram.<fmt>``.

    One panel per class: the dataset reliability histogram as a heat map (x: confidence
    bin, y: accuracy bin, colour: number of cases whose accuracy in that confidence bin falls
    in that accuracy bin; :func:`~calibseg.metrics.calculate_heatmap_from_bins`) with the
    diagonal; the pooled (micro) reliability curve over all voxels of the dataset on top
    (``show_aggregate``); micro and macro ECE in the title; the pooled voxel counts per bin
    beneath (``draw_histograms``). The arguments are the paper's, in its order.

    Args:
        heatmap: per-case statistics BinStats ``[N, C, K]`` (heat map, pooled bins, macro and
            micro errors all follow), or the paper's heat map ``[C, K, K]`` (then the pooled
            curve, counts and micro ECE come from ``binning_data``; no macro ECE).
        output_dir: output folder or URL (created if needed).
        figsize: size of one panel in inches (default 3.4 × 3.4).
        class_names: ``C`` names (default ``class <i>``).
        draw_histograms: pooled voxel counts per bin beneath the panels.
        binning_data: with a heat map, the pooled (mean_p, mean_gt, counts) ``[C, 3, K]``;
            required for ``draw_histograms``, as in the paper's code. Ignored with BinStats.
        imshow_kwargs: options of ``imshow`` for the heat map (``cmap``, ``norm`` …).
        savefig_kwargs: options of ``savefig``; ``format`` picks the file format.
        rc_params: matplotlib rc settings for this figure.
        fmt: ``"png"`` or ``"pdf"`` (default: ``savefig_kwargs["format"]``, else png).
        **opts: ``average_over_classes`` (extra panel with the class-mean heat map, default
            False), ``show_aggregate`` (True), ``cmap`` ("viridis"), ``title``.

    Returns:
        ``[path]`` of the figure written.

    Raises:
        TypeError: other input than BinStats / ``[C, K, K]``; unknown option.
        ValueError: no ``output_dir``; a heat map that is not square; ``draw_histograms``
            with a heat map but no ``binning_data``; names that do not match the data.
    """
    fmt, save = _format(fmt, savefig_kwargs)
    _check_opts(opts, _DATASET_OPTS)
    import matplotlib

    avg = bool(opts.get("average_over_classes", False))
    macro: dict[str, torch.Tensor] | None
    micro: dict[str, torch.Tensor] | None
    if isinstance(heatmap, BinStats):
        stats = heatmap
        names = _check(stats, output_dir, class_names, fmt)
        k = stats.num_bins
        heat = calculate_heatmap_from_bins(stats.means()[1], k).to(torch.float64)
        total = stats.total()
        amp, amg, acnt = (t[0].detach().cpu() for t in total.means())
        micro = {key: v[0].cpu() for key, v in total.errors().items()}
        macro = {key: v.cpu().nanmean(0) for key, v in stats.errors().items()}
        n_cases: int | None = stats.shape[0]
    elif isinstance(heatmap, (np.ndarray, torch.Tensor)) and heatmap.ndim == 3:
        heat = torch.as_tensor(np.asarray(heatmap)).to(torch.float64)
        if heat.shape[1] != heat.shape[2]:
            raise ValueError(f"heatmap must be square [C, K, K], got {tuple(heat.shape)}.")
        names = _check(None, output_dir, class_names, fmt, n_classes=heat.shape[0])
        k = heat.shape[2]
        n_cases, macro, micro = None, None, None
        if binning_data is None:
            if draw_histograms:
                raise ValueError(
                    "draw_histograms with a heat map needs the pooled binning_data [C, 3, K]."
                )
            amp = amg = torch.full((heat.shape[0], k), float("nan"), dtype=torch.float64)
            acnt = torch.zeros(heat.shape[0], k, dtype=torch.float64)
        else:
            pooled = stats_from_binning_tensor(torch.as_tensor(np.asarray(binning_data)))
            if pooled.shape[1:] != (heat.shape[0], k):
                raise ValueError(
                    f"binning_data has {tuple(pooled.shape[1:])} (classes, bins) but the heat "
                    f"map {(heat.shape[0], k)}."
                )
            amp, amg, acnt = (t[0].detach().cpu() for t in pooled.means())
            micro = {key: v[0].cpu() for key, v in pooled.errors().items()}
    else:
        shape = tuple(heatmap.shape) if hasattr(heatmap, "shape") else type(heatmap).__name__
        raise TypeError(
            f"heatmap must be a BinStats [N, C, K] or a heat map [C, K, K], got {shape}."
        )
    if avg:
        heat = torch.cat([heat, heat.mean(0, keepdim=True)])
        if micro is not None:
            micro = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in micro.items()}
        if macro is not None:
            macro = {key: torch.cat([v, v.nanmean(0, keepdim=True)]) for key, v in macro.items()}
    mp, mg, cnt, panel_names = _panels(amp, amg, acnt, names, avg)
    heat_np = heat.numpy()
    show_counts = bool(draw_histograms)
    show_agg = bool(opts.get("show_aggregate", True))
    shown = dict(imshow_kwargs or {})
    cmap = shown.pop("cmap", opts.get("cmap", "viridis"))
    if isinstance(cmap, str):
        cmap = matplotlib.colormaps[cmap].with_extremes(bad="#f4f4f4")
    n_panels = len(panel_names)
    storage.makedirs(output_dir)
    with _rc(rc_params):
        fig, gs = _figure(figsize, n_panels, show_counts)
        vmax = max(float(heat_np.max()), 1.0)
        for j, pname in enumerate(panel_names):
            ax = fig.add_subplot(gs[0, j])
            masked = np.ma.masked_where(heat_np[j] <= 0, heat_np[j])
            kw: dict[str, Any] = {
                "extent": (0, 1, 0, 1),
                "origin": "upper",
                "cmap": cmap,
                "vmin": 0,
                "vmax": vmax,
                "interpolation": "nearest",
                "aspect": "auto",
            }
            if "norm" in shown:  # matplotlib refuses norm together with vmin/vmax
                kw.pop("vmin"), kw.pop("vmax")
            im = ax.imshow(masked, **(kw | shown))
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
            ece = [
                f"{label} {float(e['ece'][j]):.3f}"
                for label, e in (("ECE micro", micro), ("macro", macro))
                if e is not None
            ]
            ax.set_title(f"{pname}\n{' · '.join(ece)}" if ece else pname)
            _finish_panel(fig, gs, ax, j, cnt[j] if show_counts else None, k, legend_cols=2)
        from matplotlib.ticker import MaxNLocator

        cbar = fig.colorbar(im, ax=fig.axes[:: 2 if show_counts else 1], shrink=0.8, label="cases")
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
        default = "Dataset reliability histogram" + (" ({n} cases)" if n_cases else "")
        title = opts.get("title", default)
        fig.suptitle(title.format(n=n_cases), fontsize="large", fontweight="bold")
        path = storage.join(str(output_dir), f"dataset_reliability_diagram.{fmt}")
        return [_save(fig, path, fmt, save)]


_COMMON_OPTS = {"average_over_classes", "title"}
_CASE_OPTS = _COMMON_OPTS | {"color", "gap_color"}
_DATASET_OPTS = _COMMON_OPTS | {"cmap", "show_aggregate"}


def _check_opts(opts: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise TypeError(
            f"unknown drawing option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}."
        )
