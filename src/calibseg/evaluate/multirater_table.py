"""Multi-rater metrics over a prediction folder → tidy table and wide summary.

Tidy table columns: ``case, model, group, region, num_bins, class, rater, metric, value`` (one
row per value; ``region`` and ``num_bins`` are the calibration region and the bins of the
classwise ECE/ACE/MCE the row was computed with — top-label calibration uses CURVAS' 50 bins;
dataset-level rows, e.g. case-level AURC, use case ``ALL``). The wide summary has one row per
``(model, group, region, num_bins, metric, rater)`` and one column per class with the mean over
cases (NaN ignored) plus ``n_cases``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from calibseg import storage
from calibseg.distributed import map_cases
from calibseg.ensemble.io import (
    list_cases,
    load_nifti,
    load_rater_items,
    prediction_folder,
    read_label,
    read_probabilities,
)
from calibseg.metrics.error_detection import case_aurc
from calibseg.metrics.multirater import REGIONS, case_metrics, region_mask

__all__ = [
    "COLUMNS",
    "case_rows",
    "compute_metrics_table",
    "summarise",
]

log = logging.getLogger(__name__)

COLUMNS = ["case", "model", "group", "region", "num_bins", "class", "rater", "metric", "value"]
_MAPS = ("entropy", "aleatoric", "epistemic", "1mmaxp")


def case_rows(
    item: dict,
    pred_file: str,
    model: str,
    group: str,
    class_names: Sequence[str] | None = None,
    region: str = "whole",
    body_threshold: float = -500.0,
    dilation: int = 3,
    num_bins: int = 20,
    top_label_bins: int = 50,
) -> list[dict]:
    """Tidy rows of all multi-rater metrics for one case (picklable, for workers).

    Uncertainty maps written beside the prediction (``<case>_entropy.nii.gz`` …,
    ``<case>_variance.nii.gz``) are used when present; otherwise entropy and 1 − max p of the
    prediction, and ``p(1−p)`` as the per-class uncertainty for the NCC.
    """
    case = item["case"]
    prob, _ = read_probabilities(pred_file)
    labs, spacing = [], None
    for path in item["raters"]:
        lab, _, zooms = read_label(path)
        labs.append(lab)
        spacing = spacing or zooms
    shapes = {tuple(x.shape) for x in labs}
    if len(shapes) != 1:
        raise ValueError(f"case {case}: rater label maps have different shapes {sorted(shapes)}.")
    labels = torch.stack(labs)
    c = prob.shape[0]
    if int(labels.max()) >= c:
        raise ValueError(
            f"case {case}: rater labels go up to {int(labels.max())} but the prediction has {c} "
            "channels; predictions must include every class (background first)."
        )
    folder = (
        pred_file.rsplit("/", 1)[0] if storage.is_remote(pred_file) else os.path.dirname(pred_file)
    )
    maps: dict[str, torch.Tensor] = {}
    for key in _MAPS:
        p = storage.join(folder, f"{case}_{key}.nii.gz")
        if storage.exists(p):
            maps[key] = _float_map(p)
    var_path = storage.join(folder, f"{case}_variance.nii.gz")
    class_unc = read_probabilities(var_path)[0] if storage.exists(var_path) else None
    image = None
    if region == "body":
        if not item.get("image") or not storage.exists(item["image"]):
            raise FileNotFoundError(f"case {case}: region 'body' needs the image, none found.")
        image = _float_map(item["image"])
    mask = region_mask(
        region,
        prob.shape[1:],
        image=image,
        labels=labels,
        body_threshold=body_threshold,
        dilation=dilation,
    )
    rows = case_metrics(
        prob,
        labels,
        spacing,
        class_names=class_names,
        uncertainty=maps or None,
        class_uncertainty=class_unc,
        region=None if region == "whole" else mask,
        num_bins=num_bins,
        top_label_bins=top_label_bins,
    )
    for r in rows:
        r.update(case=case, model=model, group=group, region=region, num_bins=num_bins)
    return rows


def _float_map(path: str) -> torch.Tensor:
    """A 3-D NIfTI map (uncertainty, image) as a float32 tensor ``[x, y, z]``."""
    data = np.squeeze(load_nifti(path)[0]).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(data))


def _case_rows_job(args: tuple) -> list[dict]:
    return case_rows(*args)


def compute_metrics_table(
    pred_dir: str,
    raters: str,
    model: str | None = None,
    group: str = "",
    class_names: Sequence[str] | None = None,
    region: str = "whole",
    body_threshold: float = -500.0,
    dilation: int = 3,
    num_bins: int = 20,
    top_label_bins: int = 50,
    scheduler: str | None = None,
    workers: int | None = None,
):
    """Tidy metrics table (pandas DataFrame, :data:`COLUMNS`) of a prediction folder against
    the raters; only cases present in both are evaluated (the others are logged)."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}.")
    folder = prediction_folder(pred_dir)
    preds = list_cases(folder)
    items, names = load_rater_items(raters)
    names = list(class_names) if class_names else names
    common = [it for it in items if it["case"] in preds]
    if not common:
        raise ValueError(
            f"no case in common between {pred_dir} ({', '.join(list(preds)[:3])} …) and the raters "
            f"({', '.join(it['case'] for it in items[:3])} …)."
        )
    skipped = len(items) - len(common)
    if skipped:
        log.info("%d rater cases have no prediction and are skipped", skipped)
    if model is None:
        model = os.path.basename(str(pred_dir).rstrip("/"))
        if model == "predictions":
            model = os.path.basename(os.path.dirname(str(pred_dir).rstrip("/")))
    if names is not None:
        c = int(_num_channels(preds[common[0]["case"]]))
        if len(names) != c:
            log.info("class names %s do not match %d channels; using class<i>", names, c)
            names = None
    args = [
        (
            it,
            preds[it["case"]],
            model,
            group,
            names,
            region,
            body_threshold,
            dilation,
            num_bins,
            top_label_bins,
        )
        for it in common
    ]
    per_case = map_cases(
        _case_rows_job, args, scheduler=scheduler, workers=workers, description="metrics"
    )
    rows = [r for case in per_case for r in case]
    df = pd.DataFrame(rows, columns=COLUMNS)
    d = df[(df.metric == "dice_consensus") & (df["class"] == "mean")].set_index("case")["value"]
    u = df[(df.metric == "mean_entropy")].set_index("case")["value"]
    if len(d) and len(u):
        j = pd.concat([d.rename("d"), u.rename("u")], axis=1, join="inner")
        extra = [
            {
                "case": "ALL",
                "model": model,
                "group": group,
                "region": region,
                "num_bins": num_bins,
                "class": "all",
                "rater": "consensus",
                "metric": k,
                "value": v,
            }
            for k, v in case_aurc(j["d"].to_numpy(), j["u"].to_numpy()).items()
        ]
        df = pd.concat([df, pd.DataFrame(extra, columns=COLUMNS)], ignore_index=True)
    return df


def _num_channels(path: str) -> int:
    return int(read_probabilities(path)[0].shape[0])


def summarise(df):
    """Wide summary: mean over cases per ``(model, group, region, num_bins, metric, rater)`` ×
    class (the settings present in ``df``), NaN ignored, plus ``n_cases`` (cases with at least one
    finite value)."""
    df = df.assign(group=df["group"].fillna("").astype(str))
    per = df[df["case"] != "ALL"]
    keys = ["model", "group", *(k for k in ("region", "num_bins") if k in df.columns)]
    keys += ["metric", "rater"]
    wide = per.pivot_table(
        index=keys, columns="class", values="value", aggfunc="mean", dropna=False
    )
    wide = wide.dropna(axis=0, how="all")
    n = per[np.isfinite(per["value"])].groupby(keys)["case"].nunique().rename("n_cases")
    out = wide.join(n, how="left").reset_index()
    out.columns.name = None
    dataset = df[df["case"] == "ALL"]
    if len(dataset):
        ds = dataset.pivot_table(index=keys, columns="class", values="value", aggfunc="mean")
        ds = ds.reset_index()
        ds.columns.name = None
        out = pd.concat([out, ds], ignore_index=True)
    return out
