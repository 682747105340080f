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
from typing import Any

import numpy as np

from calibseg import storage

__all__ = [
    "COLUMNS",
    "load_rater_items",
    "case_rows",
    "compute_metrics_table",
    "summarise",
    "map_over_cases",
]

log = logging.getLogger(__name__)

COLUMNS = ["case", "model", "group", "region", "num_bins", "class", "rater", "metric", "value"]
_MAPS = ("entropy", "aleatoric", "epistemic", "1mmaxp")


def _resolve(base: str, p: str) -> str:
    if storage.is_remote(p) or os.path.isabs(p):
        return p
    return storage.join(base, p[2:] if p.startswith("./") else p)


def load_rater_items(raters: str) -> tuple[list[dict], list[str] | None]:
    """Cases with rater label paths from a dataset.json (items with ``"raters"``; relative paths
    resolved against its folder), a folder holding dataset.json, or a CURVAS-layout root
    (``<case>/image.nii.gz``, ``annotation_1..K.nii.gz``). Returns ``(items, class_names)``.
    """
    src = str(raters).rstrip("/")
    if not storage.exists(src):
        raise FileNotFoundError(f"no such raters path: {raters}")
    if not src.endswith(".json") and storage.exists(storage.join(src, "dataset.json")):
        src = storage.join(src, "dataset.json")
    if src.endswith(".json"):
        meta = storage.read_json(src)
        base = src.rsplit("/", 1)[0] if storage.is_remote(src) else os.path.dirname(src)
        lists = [
            meta[k] for k in ("training", "validation", "test") if isinstance(meta.get(k), list)
        ]
        if not lists and isinstance(meta, dict):
            lists = [v for v in meta.values() if isinstance(v, list)]
        items = []
        for entry in (e for lst in lists for e in lst if isinstance(e, dict)):
            if not entry.get("raters"):
                continue
            first = entry.get("label") or entry["raters"][0]
            case = entry.get("case") or os.path.basename(first).split(".nii")[0]
            img = entry.get("image")
            if isinstance(img, list):
                img = img[0] if img else None
            items.append(
                {
                    "case": case,
                    "image": _resolve(base, img) if img else None,
                    "raters": [_resolve(base, r) for r in entry["raters"]],
                }
            )
        if not items:
            raise ValueError(f"{src} lists no item with 'raters' (rater label paths).")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        names = None
        if isinstance(labels, dict) and labels:
            names = [str(labels[k]) for k in sorted(labels, key=lambda x: int(x))]
        return items, names
    try:
        from calibseg.data import scan_multirater
    except ImportError:  # older layout of the data package
        from calibseg.data.scanners import scan_multirater
    items = [it for it in scan_multirater(src) if it.get("raters")]
    if not items:
        raise ValueError(f"no case with annotation_*.nii.gz files under {raters}.")
    # rater k of every case is annotation_k: a missing one is refused, never renumbered
    for it in items:
        gone = [k + 1 for k, p in enumerate(it["raters"]) if not storage.exists(p)]
        if gone:
            raise FileNotFoundError(
                f"case {it['case']} lacks rater(s) {', '.join(map(str, gone))} of "
                f"{len(it['raters'])} (annotation_<k>.nii.gz); `calibseg data prepare curvas "
                f"--data-root {raters}` lists every problem."
            )
    try:
        from calibseg.data.scanners import MULTIRATER_CLASS_NAMES as names
    except ImportError:
        names = None
    return items, list(names) if names else None


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
    import torch

    from calibseg.ensemble.io import read_label, read_probabilities
    from calibseg.metrics.multirater import case_metrics, region_mask

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
            maps[key] = read_label_float(p)
    var_path = storage.join(folder, f"{case}_variance.nii.gz")
    class_unc = read_probabilities(var_path)[0] if storage.exists(var_path) else None
    image = None
    if region == "body":
        if not item.get("image") or not storage.exists(item["image"]):
            raise FileNotFoundError(f"case {case}: region 'body' needs the image, none found.")
        image = read_label_float(item["image"])
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


def read_label_float(path: str):
    """A 3-D NIfTI map as a float32 tensor ``[x, y, z]``."""
    import nibabel as nib
    import torch

    with storage.local_path(path) as local:
        data = np.asarray(nib.load(local).dataobj, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(np.squeeze(data)))


def map_over_cases(fn, arg_list: list[tuple], scheduler: str | None, workers: int | None) -> list:
    """Apply ``fn(*args)`` to every args tuple through ``calibseg.distributed.map_cases``
    (in-process by default, a Dask cluster with ``scheduler`` or ``workers``)."""
    try:
        from calibseg.distributed import map_cases
    except ImportError:
        if scheduler or workers:
            log.warning("calibseg.distributed.map_cases is not available; computing in-process")
        return [fn(*a) for a in arg_list]
    jobs = [(fn, a) for a in arg_list]
    return list(map_cases(_star, jobs, scheduler=scheduler, workers=workers, description="metrics"))


def _star(job: tuple) -> Any:
    fn, args = job
    return fn(*args)


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
    import pandas as pd

    from calibseg.ensemble.io import list_cases, prediction_folder
    from calibseg.metrics.error_detection import case_aurc
    from calibseg.metrics.multirater import REGIONS

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
    rows = [r for rows in map_over_cases(case_rows, args, scheduler, workers) for r in rows]
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
    from calibseg.ensemble.io import read_probabilities

    return int(read_probabilities(path)[0].shape[0])


def summarise(df):
    """Wide summary: mean over cases per ``(model, group, region, num_bins, metric, rater)`` ×
    class (the settings present in ``df``), NaN ignored, plus ``n_cases`` (cases with at least one
    finite value)."""
    import pandas as pd

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
