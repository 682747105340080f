"""Case-level evaluation of a run: calibration (BinStats), Dice and HD95 → tables and figures.

Per case (possibly on a Dask worker): read the label and ``<case>_prob.nii.gz`` (channel-last
``[x, y, z, C]`` probabilities), bin with :func:`calibseg.binning.compute_bin_stats`, compute
Dice (MONAI, empty classes scored as in validation) and HD95 (in the label's voxel-spacing units,
usually mm; a missed or hallucinated structure scores the image diagonal), ECE/ACE/MCE per
class and flags for classes absent from the ground truth, missed or hallucinated. The client stacks the per-case
BinStats ``[N, C, K]``: micro errors reduce their sum (exact, whatever the fan-out), macro
errors average the per-case errors.

Outputs never overwrite earlier ones: if ``<run>/evaluation/`` already holds results the next
free ``evaluation_2/``, ``evaluation_3/`` … is used (the summary records which). A result folder
is complete or absent: local results are written in a hidden temporary folder that is renamed
when done; on an object store ``summary.json`` is written last and marks the folder complete.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from calibseg import storage
from calibseg.binning import check_num_bins
from calibseg.bundles import splits_at_run_time
from calibseg.data import get_dataset, list_datasets
from calibseg.distributed import map_cases, resolve_mode
from calibseg.ensemble.io import load_nifti

__all__ = [
    "evaluate_run",
    "evaluate_predictions",
    "evaluate_case",
    "REGION_DATASETS",
    "next_free_dir",
    "METRICS",
]

log = logging.getLogger(__name__)

REGION_DATASETS = ("kits23", "brats21")
METRICS = ("dice", "hd95", "ece", "ace", "mce", "missing", "missed", "hallucinated")
_RESULT_FILES = ("summary.json", "cases.csv", "bin_stats.npz")


def _region_transforms(dataset: str):
    """(label transform, probability transform, region names) for a region dataset."""
    from calibseg import transforms as T

    if dataset == "kits23":
        return (
            T.ConvertToKits23Classesd(keys="x"),
            T.ConvertToKits23ClassesSoftmaxd(keys="x"),
            list(T.KITS23_REGION_NAMES),
        )
    if dataset == "brats21":
        return (
            T.ConvertToBratsClassesd(keys="x"),
            T.ConvertToBratsClassesSoftmaxd(keys="x"),
            list(T.BRATS_REGION_NAMES),
        )
    raise ValueError(
        f"--regions needs a dataset with hierarchical regions ({', '.join(REGION_DATASETS)}), "
        f"got {dataset!r}."
    )


def evaluate_case(
    task: dict[str, Any],
    num_classes: int,
    num_bins: int = 20,
    regions: str | None = None,
    label_map: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """Evaluate one case.

    Args:
        task: ``{"case": id, "label": path/URL, "prob": path/URL}``.
        num_classes: C, the number of classes of the model (background first).
        num_bins: calibration bins K.
        regions: ``"kits23"`` / ``"brats21"`` to evaluate hierarchical region channels
            instead of classes (then C = number of regions = 4).
        label_map: raw label value → class index, applied to the label file before anything
            else (a dataset's map, e.g. BraTS's ``{4: 3}``, as its training pipeline applies it).

    Returns:
        ``{"case", "weight" [C, K] int64, "sum_p" [C, K] float64, "sum_gt" [C, K] float64,
        "dice" [C], "hd95" [C], "ece" [C], "ace" [C], "mce" [C], "missing" [C] (1.0 = class
        absent from the ground truth), "missed" [C] (in the ground truth, not predicted),
        "hallucinated" [C] (predicted, not in the ground truth)}`` as numpy arrays (small;
        cheap to send back). Dice of two empty masks is 1, one empty 0; HD95 (label spacing
        units) of two empty masks 0, one empty the image diagonal.
    """
    import torch
    from monai.metrics import compute_dice

    from calibseg.binning import compute_bin_stats
    from calibseg.metrics.multirater import image_diagonal_mm
    from calibseg.metrics.surface_distance import compute_hausdorff_distance  # MONAI's values

    case = str(task["case"])
    label, spacing = read_label(task["label"], label_map)
    prob = load_nifti(task["prob"])[0]
    if prob.ndim != label.ndim + 1:
        raise ValueError(
            f"case {case}: probabilities must be channel-last [x, y, z, C] over the label grid "
            f"{label.shape}, got shape {prob.shape}."
        )
    if prob.shape[:-1] != label.shape:
        raise ValueError(
            f"case {case}: prediction grid {prob.shape[:-1]} does not match the label {label.shape} "
            "(predict on the original image grid)."
        )
    if prob.shape[-1] != num_classes:
        raise ValueError(
            f"case {case}: prediction has {prob.shape[-1]} channels, the bundle has "
            f"{num_classes} classes."
        )
    lab = torch.from_numpy(np.rint(label).astype(np.int64))
    if int(lab.min()) < 0 or int(lab.max()) >= num_classes:
        mapped = f" after the label map {dict(label_map)}" if label_map else ""
        raise ValueError(
            f"case {case}: label values must be in [0, {num_classes - 1}]{mapped}, "
            f"got [{int(lab.min())}, {int(lab.max())}]."
        )
    prob = prob.astype(np.float32, copy=False)
    # argmax over the contiguous channel-last axis; the binning reads the channel-last array
    # in place through a channel-first view (no copy)
    pred = torch.from_numpy(np.argmax(prob, axis=-1))
    p = torch.from_numpy(prob).movedim(-1, 0)  # [C, *sp] view of the channel-last storage
    del prob
    classes = torch.arange(num_classes).view(-1, *([1] * lab.ndim))
    y = (lab[None] == classes).to(torch.float32)  # one-hot [C, *sp]
    seg = (pred[None] == classes).to(torch.float32)
    if regions is not None:
        to_regions, prob_to_regions, _ = _region_transforms(regions)
        y = torch.as_tensor(to_regions({"x": y})["x"])
        seg = torch.as_tensor(to_regions({"x": seg})["x"])
        p = torch.as_tensor(prob_to_regions({"x": p})["x"]).clamp_(0.0, 1.0)
    p, y, seg = p[None], y[None], seg[None]  # [1, C, *spatial]
    stats = compute_bin_stats(p, y, num_bins=num_bins)
    del p
    errors = stats.errors()
    # ignore_empty=False, as the validation DiceMetric of every bundle (configs/validation.yaml)
    # and the multi-rater table: a class absent from both gives 1, a missed or hallucinated one
    # gives 0. With ignore_empty=True a hallucinated class would be NaN, dropped from the mean,
    # and a model predicting absent structures would look no worse.
    dice = compute_dice(seg, y, include_background=True, ignore_empty=False)
    # HD95 with the multi-rater convention (both empty → 0, one empty → image diagonal in mm),
    # so a missed or hallucinated structure costs the largest distance instead of being dropped
    gt_empty = y.flatten(2).sum(-1) == 0
    pred_empty = seg.flatten(2).sum(-1) == 0
    sp = [float(v) for v in spacing[: lab.ndim]]
    with warnings.catch_warnings():  # empty pairs are replaced below
        warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf")
        hd95 = compute_hausdorff_distance(
            seg, y, include_background=True, percentile=95, spacing=sp
        )
    hd95 = hd95[0].to(torch.float64)
    diag = float(image_diagonal_mm(tuple(lab.shape), sp))
    hd95 = torch.where(gt_empty[0] & pred_empty[0], 0.0, hd95)
    hd95 = torch.where(gt_empty[0] ^ pred_empty[0], diag, hd95)
    missing = gt_empty.to(torch.float64)
    out = {
        "case": case,
        "weight": stats.weight[0].numpy(),
        "sum_p": stats.sum_p[0].numpy(),
        "sum_gt": stats.sum_gt[0].numpy(),
        "dice": dice[0].double().numpy(),
        "hd95": hd95.double().numpy(),
        "missing": missing[0].numpy(),
        "missed": (~gt_empty & pred_empty)[0].to(torch.float64).numpy(),
        "hallucinated": (gt_empty & ~pred_empty)[0].to(torch.float64).numpy(),
    }
    out.update({k: v[0].numpy() for k, v in errors.items()})
    return out


def next_free_dir(base: str) -> str:
    """``base`` unless it holds a complete evaluation (``summary.json``, written last), else
    the first such free ``base_2``, ``base_3`` … A folder with result files but no
    ``summary.json`` is an interrupted evaluation and is reused (its files are replaced)."""
    candidate, n = base, 1
    while storage.exists(storage.join(candidate, "summary.json")):
        n += 1
        candidate = f"{base.rstrip('/')}_{n}"
    return candidate


def _begin_output(out: str) -> str:
    """Where the results of ``out`` are written before :func:`_finish_output`: a hidden
    temporary folder beside a local ``out`` (renamed at the end), ``out`` itself on an object
    store (where ``summary.json``, written last, marks the folder complete)."""
    import tempfile

    if storage.is_remote(out):
        return out
    parent, name = os.path.split(os.path.abspath(out.rstrip("/")))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{name}.part-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; results are an ordinary folder
    return stage


def _abort_output(stage: str, out: str, error: BaseException | None = None) -> None:
    """Drop the temporary folder of a failed local evaluation (remote: nothing to drop; the
    folder lacks ``summary.json`` and the next run reuses it). An OSError about a file in the
    temporary folder is raised again naming the file's place in ``out``."""
    import shutil

    if stage == out:
        return
    shutil.rmtree(stage, ignore_errors=True)
    name = getattr(error, "filename", None)
    if isinstance(error, OSError) and isinstance(name, str) and name.startswith(stage):
        final = os.path.join(os.path.abspath(out.rstrip("/")), os.path.relpath(name, stage))
        raise type(error)(error.errno, error.strerror, final) from error


def _finish_output(stage: str, out: str, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (the completion marker) and publish ``stage`` as ``out``: one
    rename when ``out`` does not exist yet, else file by file with ``summary.json`` last."""
    try:
        storage.write_json(storage.join(stage, "summary.json"), summary)
        if stage == out:
            return
        target = os.path.abspath(out.rstrip("/"))
        try:
            os.rename(stage, target)  # atomic when the folder is new (or empty)
            return
        except OSError:
            if not os.path.isdir(target):
                raise
        names = sorted(os.listdir(stage), key=lambda n: n == "summary.json")
        for name in names:
            os.replace(os.path.join(stage, name), os.path.join(target, name))
        os.rmdir(stage)
    except BaseException as e:
        _abort_output(stage, out, e)
        raise


def read_label(path: str, label_map: Mapping[int, int] | None = None) -> tuple[np.ndarray, tuple]:
    """``(label volume, voxel spacing)`` of a label file (path or URL; singleton axes dropped)
    with ``label_map`` (raw value → class index) applied by MONAI's ``MapLabelValue``, as the
    dataset's training pipeline applies it."""
    label, _, spacing = load_nifti(path)
    label = np.squeeze(label)
    if label_map:
        from monai.transforms import MapLabelValue

        orig, target = zip(*sorted(label_map.items()), strict=True)
        label = MapLabelValue(list(orig), list(target), dtype=np.float64)(label)
    return label, spacing


def dataset_label_map(dataset: str) -> dict[int, int] | None:
    """The label map of a registered dataset (raw value → class index), None for other names."""
    if dataset.lower() not in list_datasets():
        return None
    return get_dataset(dataset).label_map


def _read_bundle(bundle: str, data_root: str | None = None) -> tuple[list[dict], list[str], str]:
    import yaml

    splits_path = storage.join(bundle, "splits.json")
    data_path = storage.join(bundle, "configs", "data.yaml")
    for p in (splits_path, data_path):
        if not storage.exists(p):
            raise FileNotFoundError(
                f"{storage.redact(p)} not found: is {storage.redact(bundle)} a calibseg bundle "
                "(calibseg bundle create …)?"
            )
    splits = splits_at_run_time(bundle, data_root)
    items = splits.get("test") if isinstance(splits, dict) else None
    if not items:
        raise ValueError(f"{storage.redact(splits_path)} has no 'test' items to evaluate.")
    cfg = yaml.safe_load(storage.read_text(data_path)) or {}
    names = cfg.get("class_names")
    if not names or not isinstance(names, list):
        raise ValueError(f"{storage.redact(data_path)} has no 'class_names' list.")
    return items, [str(n) for n in names], str(cfg.get("dataset", ""))


def _stats_summary(
    results: list[dict], names: list[str]
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    import torch

    from calibseg.binning import BinStats

    stats = BinStats(
        torch.from_numpy(np.stack([r["weight"] for r in results])),
        torch.from_numpy(np.stack([r["sum_p"] for r in results])),
        torch.from_numpy(np.stack([r["sum_gt"] for r in results])),
    )
    micro = {k: v[0].numpy() for k, v in stats.total().errors().items()}
    per_case = {m: np.stack([r[m] for r in results]) for m in METRICS}  # [N, C]

    def mean_std(a: np.ndarray) -> dict[str, float | int | None]:
        ok = a[np.isfinite(a)]
        return {
            "mean": float(ok.mean()) if ok.size else None,
            "std": float(ok.std()) if ok.size else None,
            "n": int(ok.size),
        }

    summary: dict[str, Any] = {"classes": {}}
    for c, name in enumerate(names):
        summary["classes"][name] = {
            "macro": {k: mean_std(per_case[k][:, c])["mean"] for k in ("ece", "ace", "mce")},
            "micro": {
                k: (float(micro[k][c]) if np.isfinite(micro[k][c]) else None)
                for k in ("ece", "ace", "mce")
            },
            "dice": mean_std(per_case["dice"][:, c]),
            "hd95": {
                **mean_std(per_case["hd95"][:, c]),
                "missed": int(per_case["missed"][:, c].sum()),
                "hallucinated": int(per_case["hallucinated"][:, c].sum()),
            },
            "missing_cases": int(per_case["missing"][:, c].sum()),
        }
    rows = [
        {"case": r["case"], "class": name, "metric": m, "value": float(r[m][c])}
        for r in results
        for c, name in enumerate(names)
        for m in METRICS
    ]
    return stats, summary, rows


def evaluate_run(
    bundle: str | os.PathLike,
    run_name: str = "seed_0",
    regions: bool = False,
    num_bins: int = 20,
    case_figures: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Evaluate the test-split predictions of ``<bundle>/<run_name>/predictions/``.

    Writes ``cases.csv`` (tidy: case, class, metric, value with metric in dice, hd95, ece,
    ace, mce, missing, missed, hallucinated), ``summary.json`` (per class: macro and micro
    ECE/ACE/MCE, Dice and HD95 mean/std/n over the cases, HD95 with the numbers of missed and
    hallucinated cases, number of cases missing the class),
    ``bin_stats.npz`` (per-case BinStats ``[N, C, K]``) and ``dataset_reliability_diagram.png``
    (+ one ``<case>_reliability_diagram.png`` each with ``case_figures``) into
    ``<bundle>/<run_name>/evaluation/`` (or ``out_dir``), or the next free ``…_2``, ``…_3``
    folder if that one already has results. Any path may be an ``s3://`` URL.

    The labels are read under ``data_root`` (default: ``$CALIBSEG_DATA_<NAME>`` or the root the
    bundle was created with; see :func:`calibseg.bundles.resolve_data_root`), with the dataset's
    label map applied (BraTS: 4 → 3) as in training.

    Returns the summary dict (also with ``"output_dir"``).
    """
    check_num_bins(num_bins)
    resolve_mode(scheduler, workers)
    bundle = str(bundle).rstrip("/")
    items, class_names, dataset = _read_bundle(bundle, data_root)
    run = storage.join(bundle, run_name)
    return evaluate_predictions(
        storage.join(run, "predictions"),
        items,
        class_names,
        str(out_dir) if out_dir is not None else storage.join(run, "evaluation"),
        num_bins=num_bins,
        regions=dataset if regions else None,
        case_figures=case_figures,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        label_map=dataset_label_map(dataset),
        source={"bundle": storage.redact(bundle), "run": run_name, "dataset": dataset},
        missing_hint=f"run `calibseg predict {storage.redact(bundle)} {_run_option(run_name)}` first",
    )


def evaluate_predictions(
    pred_dir: str,
    items: Sequence[dict],
    class_names: Sequence[str],
    out_dir: str,
    num_bins: int = 20,
    regions: str | None = None,
    case_figures: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    missing_hint: str = "predict them first",
    label_map: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """Evaluate a folder of predictions ``<pred_dir>/<case>_prob.nii.gz`` (channel-last
    ``[x, y, z, C]`` on each label's grid) against ``items`` (``{"case", "label"}``).

    ``class_names``: the model's C classes, background first; ``regions``: ``"kits23"`` /
    ``"brats21"`` to evaluate region channels instead. Writes the files of
    :func:`evaluate_run` into ``out_dir`` or the next free ``…_2``, ``…_3`` folder; ``source``
    (e.g. bundle, run, dataset) leads the summary; ``label_map``: see :func:`evaluate_case`.
    Returns the summary dict (also with ``"output_dir"``). Raises FileNotFoundError naming the
    first case without a prediction (with ``missing_hint``), ValueError for an item without
    ``case``/``label``.
    """
    check_num_bins(num_bins)
    tasks = []
    for it in items:
        case = str(it.get("case") or "")
        if not case or "label" not in it:
            raise ValueError(
                f"test item without 'case'/'label' for {storage.redact(pred_dir)}: {it}"
            )
        tasks.append(
            {
                "case": case,
                "label": it["label"],
                "prob": storage.join(pred_dir, f"{case}_prob.nii.gz"),
            }
        )
    present = set(_list_names(pred_dir))
    missing = [t["case"] for t in tasks if os.path.basename(t["prob"]) not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"no prediction for case {missing[0]}{more} in {storage.redact(pred_dir)}: "
            f"{missing_hint}."
        )
    names = list(class_names)
    if regions is not None:
        names = _region_transforms(regions)[2]
    fn = partial(
        evaluate_case,
        num_classes=len(class_names),
        num_bins=num_bins,
        regions=regions,
        label_map=label_map,
    )
    results = map_cases(
        fn, tasks, scheduler=scheduler, workers=workers, progress=progress, description="evaluate"
    )
    stats, summary, rows = _stats_summary(results, names)

    out = next_free_dir(str(out_dir))
    case_ids = [r["case"] for r in results]
    from calibseg.metrics import save_bin_stats

    stage = _begin_output(out)
    try:
        _write_csv(storage.join(stage, "cases.csv"), rows)
        save_bin_stats(storage.join(stage, "bin_stats.npz"), stats, case_ids, names)
        figures = _figures(stats, stage, case_ids, names, case_figures)
    except BaseException as e:
        _abort_output(stage, out, e)
        raise
    summary = {
        **(source or {}),
        "regions": regions is not None,
        "num_cases": len(results),
        "num_bins": num_bins,
        "class_names": names,
        "hd95_units": "label voxel-spacing units (mm for NIfTI in mm)",
        **summary,
        "figures": [os.path.basename(str(f)) for f in figures],
        "output_dir": storage.redact(out),
    }
    _finish_output(stage, out, summary)
    log.info("evaluation of %d cases written to %s", len(results), storage.redact(out))
    return summary


def _run_option(run_name: str) -> str:
    """The ``calibseg predict`` option that selects ``run_name`` (``--seed N`` or ``--run-name``)."""
    seed = run_name[len("seed_") :] if run_name.startswith("seed_") else ""
    return f"--seed {seed}" if seed.isdigit() else f"--run-name {run_name}"


def _list_names(folder: str) -> list[str]:
    try:
        return storage.ls(folder)
    except FileNotFoundError:
        return []


def _write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(rows, columns=["case", "class", "metric", "value"]).to_csv(buf, index=False)
    storage.write_text(path, buf.getvalue())


def _figures(stats, out: str, case_ids: list[str], names: list[str], case_figures: bool) -> list:
    from calibseg.visualize import (
        draw_case_reliability_diagrams,
        draw_dataset_reliability_diagrams,
    )

    files = list(draw_dataset_reliability_diagrams(stats, out, class_names=names))
    if case_figures:
        files += list(
            draw_case_reliability_diagrams(stats, out, case_names=case_ids, class_names=names)
        )
    return files
