"""Calibration studies: losses × seeds, trained with early stopping, evaluated on the test split,
with post-hoc temperature scaling of every model as a side-by-side alternative.

One run (bundle, seed) goes through: train (resumes; early stopping on the validation split) →
predict the validation and test splits with the best-Dice checkpoint → evaluate the test split
→ fit a temperature by NLL on the validation predictions, apply it to the test predictions
(``<bundle>/seed_<s>_temperature/``) and evaluate those. Each step is skipped when its output
exists, so rerunning a study continues where it stopped. Runs fan out over Dask workers
(:func:`calibseg.distributed.map_cases`); each returns small per-case rows.

Outputs under ``<out>``: ``study.csv`` (tidy: loss, calibration, seed, case, metric, value;
``case`` empty for dataset-level micro values), ``study.json`` (settings, temperatures,
validation histories), ``report.html`` (see :mod:`calibseg.evaluate.study_report`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calibseg import storage
from calibseg.bundles import LOSSES as BUNDLE_LOSSES
from calibseg.bundles import read_splits, splits_at_run_time
from calibseg.ensemble.io import load_nifti
from calibseg.nnunet import study_losses as nnunet_losses

__all__ = [
    "StudySettings",
    "run_study",
    "run_one",
    "case_table",
    "CASE_METRICS",
    "MICRO_METRICS",
    "TEMPERATURE_SUFFIX",
]

log = logging.getLogger(__name__)

CASE_METRICS: tuple[str, ...] = ("dice", "hd95", "ece", "ace", "mce")
MICRO_METRICS: tuple[str, ...] = ("micro_ece", "micro_ace", "micro_mce")
TEMPERATURE_SUFFIX = "_temperature"
_DONE = "study_run.json"  # marker written last in each run folder


@dataclass
class StudySettings:
    """What a study trains and how.

    Attributes:
        data: dataset name (``synthetic``, ``acdc17`` …); ``data_root`` its folder.
        losses: bundle losses; the first is the baseline every other row is compared with.
        seeds: run seeds (model initialisation, data order, augmentation).
        overrides: bundle config overrides (``"<config>#<key>": value``) shared by all losses.
        patience: validations without a Dice gain before stopping (0: no early stopping).
        temperature: ``"scalar"`` (one temperature per model), ``"per_class"`` or ``"none"``.
        num_bins: calibration bins of the evaluation.
        threads_per_run: torch threads of each run (None: torch's default). One thread per run
            makes a run's numbers independent of the machine's core count.
    """

    data: str = "synthetic"
    data_root: str | None = None
    losses: tuple[str, ...] = ("baseline_dice_ce", "hardl1ace_dice_ce", "softl1ace_dice_ce")
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: dict[str, Any] = field(default_factory=dict)
    patience: int = 10
    temperature: str = "scalar"
    num_bins: int = 20
    threads_per_run: int | None = None

    def check(self) -> None:
        """Raise ValueError for settings a study cannot run."""
        if not self.losses:
            raise ValueError("a study needs at least one loss.")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"losses must be distinct, got {list(self.losses)}.")
        for loss in self.losses:
            if loss in nnunet_losses():
                raise ValueError(
                    f"{loss} is an nnU-Net trainer, trained by nnU-Net's pipeline: calibseg "
                    f"nnunet ensemble train … --loss {loss.removeprefix('nnunet_')} (a study "
                    "trains MONAI bundles)."
                )
            if loss not in BUNDLE_LOSSES:
                valid = ", ".join((*BUNDLE_LOSSES, *nnunet_losses()))
                raise ValueError(f"unknown loss {loss!r}; valid losses: {valid}.")
        if not self.seeds or any(isinstance(s, bool) or int(s) < 0 for s in self.seeds):
            raise ValueError(f"seeds must be integers >= 0, got {list(self.seeds)}.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}.")
        if self.temperature not in ("scalar", "per_class", "none"):
            raise ValueError(
                f"temperature must be 'scalar', 'per_class' or 'none', got {self.temperature!r}."
            )
        if int(self.patience) < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}.")


def case_table(eval_dir: str) -> Any:
    """Per-case metrics from ``<eval_dir>/cases.csv``: DataFrame [case × CASE_METRICS].

    Each value is the mean over the foreground classes (all classes but the first) that are
    finite for the case.
    """
    import pandas as pd

    df = pd.read_csv(io.StringIO(storage.read_text(storage.join(eval_dir, "cases.csv"))))
    classes = list(dict.fromkeys(df["class"]))
    fg = df[(df["class"] != classes[0]) & df["metric"].isin(CASE_METRICS)].copy()
    fg.loc[~np.isfinite(fg["value"].to_numpy(dtype=float)), "value"] = np.nan
    table = fg.groupby(["case", "metric"])["value"].mean().unstack("metric")
    return table.reindex(columns=list(CASE_METRICS))


def _micro(eval_dir: str) -> dict[str, float]:
    """Micro (dataset-level) ECE/ACE/MCE averaged over the foreground classes."""
    summary = storage.read_json(storage.join(eval_dir, "summary.json"))
    names = list(summary["classes"])[1:]
    out = {}
    for k in ("ece", "ace", "mce"):
        vals = [summary["classes"][n]["micro"][k] for n in names]
        vals = [v for v in vals if v is not None]
        out[f"micro_{k}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def _load_prob_label(prob_path: str, label_path: str):
    """(probabilities [1, C, *sp] float32 tensor, labels [1, 1, *sp] int64 tensor)."""
    import torch

    p = load_nifti(prob_path)[0].astype(np.float32, copy=False)
    y = np.rint(np.squeeze(load_nifti(label_path)[0])).astype(np.int64)
    if p.shape[:-1] != y.shape:
        raise ValueError(
            f"{storage.redact(prob_path)} has grid {p.shape[:-1]}, its label {y.shape}."
        )
    prob = torch.from_numpy(np.ascontiguousarray(np.moveaxis(p, -1, 0)))[None]
    return prob, torch.from_numpy(y)[None, None]


def _temperature_run(bundle: str, run_name: str, mode: str) -> dict[str, Any]:
    """Fit the temperature on the validation predictions of ``run_name``; write temperature-
    scaled test predictions into ``<run_name>_temperature/predictions``; return the fit."""
    import nibabel as nib
    import torch

    from calibseg.posthoc import apply_temperature, fit_temperature, nll

    splits = splits_at_run_time(bundle)
    pred = storage.join(bundle, run_name, "predictions")
    probs, labels = [], []
    for it in splits["validation"]:
        p, y = _load_prob_label(storage.join(pred, f"{it['case']}_prob.nii.gz"), it["label"])
        probs.append(p.movedim(1, -1).reshape(-1, p.shape[1]))
        labels.append(y.reshape(-1))
    if not probs:
        raise ValueError(f"temperature scaling needs validation cases; {bundle} has none.")
    vp, vy = torch.cat(probs), torch.cat(labels)
    t = fit_temperature(vp, vy, per_class=(mode == "per_class"))
    fit = {
        "mode": mode,
        "temperature": t.tolist(),
        "val_nll_before": nll(vp, vy),
        "val_nll_after": nll(vp, vy, t),
        "val_voxels": int(vy.numel()),
    }
    out = storage.join(bundle, run_name + TEMPERATURE_SUFFIX, "predictions")
    storage.makedirs(out)
    for it in splits["test"]:
        src = storage.join(pred, f"{it['case']}_prob.nii.gz")
        arr, affine, _ = load_nifti(src)
        p = torch.from_numpy(arr.astype(np.float32, copy=False))
        q = apply_temperature(p.movedim(-1, 0)[None], t)[0].movedim(0, -1).numpy()
        for suffix, arr in (("prob", q), ("seg", q.argmax(-1).astype(np.uint8))):
            dst = storage.join(out, f"{it['case']}_{suffix}.nii.gz")
            with storage.local_output(dst) as tmp:
                nib.save(nib.Nifti1Image(arr, affine), tmp)
    storage.write_json(storage.join(bundle, run_name + TEMPERATURE_SUFFIX, "temperature.json"), fit)
    return fit


def _evaluated(bundle: str, run_name: str, num_bins: int) -> str:
    """The run's test evaluation folder, evaluating it first when it has none."""
    from calibseg.evaluate.pipeline import evaluate_run

    eval_dir = storage.join(bundle, run_name, "evaluation")
    if not storage.exists(storage.join(eval_dir, "summary.json")):
        evaluate_run(bundle, run_name=run_name, num_bins=num_bins, progress=False)
    return eval_dir


def _run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One (bundle, seed) of a study; resumable. Returns ``{"loss", "seed", "rows", "history",
    "temperature", "figures"}`` (rows: tidy dicts of per-case and micro values)."""
    from calibseg.bundles.runner import predict, train

    bundle, loss, seed = task["bundle"], task["loss"], int(task["seed"])
    run_name = f"seed_{seed}"
    run = storage.join(bundle, run_name)
    marker = storage.join(run, _DONE)
    if storage.exists(marker):
        return storage.read_json(marker)
    train(bundle, seed=seed, patience=int(task["patience"]))
    pred = storage.join(run, "predictions")
    done = set(os.path.basename(p) for p in storage.ls(pred)) if storage.exists(pred) else set()
    splits = read_splits(bundle)  # case names only
    for split in ("validation", "test"):
        if any(f"{it['case']}_prob.nii.gz" not in done for it in splits[split]):
            predict(bundle, seed=seed, checkpoint="best", cases=split)
    variants = [("none", run_name)]
    fit = None
    if task["temperature"] != "none":
        ts_name = run_name + TEMPERATURE_SUFFIX
        fit_path = storage.join(bundle, ts_name, "temperature.json")
        if storage.exists(fit_path):
            fit = storage.read_json(fit_path)
        else:
            fit = _temperature_run(bundle, run_name, task["temperature"])
        variants.append(("temperature", ts_name))
    rows: list[dict[str, Any]] = []
    figures = {}
    for calib, name in variants:
        eval_dir = _evaluated(bundle, name, int(task["num_bins"]))
        figures[calib] = storage.join(eval_dir, "dataset_reliability_diagram.png")
        base = {"loss": loss, "calibration": calib, "seed": seed}
        per_case = case_table(eval_dir)
        for case, values in per_case.iterrows():
            for m in CASE_METRICS:
                rows.append({**base, "case": str(case), "metric": m, "value": float(values[m])})
        for m, v in _micro(eval_dir).items():
            rows.append({**base, "case": "", "metric": m, "value": v})
    summary = storage.read_json(storage.join(run, "training_summary.json"))
    result = {
        "loss": loss,
        "seed": seed,
        "bundle": storage.redact(bundle),
        "rows": rows,
        "history": summary.get("history", []),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary.get("epochs"),
        "early_stopped": summary.get("early_stopped"),
        "temperature": fit,
        "figures": figures,
    }
    storage.write_json(marker, result)
    return result


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One (bundle, seed) of a study (see :func:`_run_one`), with ``task["threads"]`` torch
    threads for its duration (the caller's thread count is restored afterwards)."""
    import torch

    threads = task.get("threads")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run_one(task)
    finally:
        torch.set_num_threads(previous)


def run_study(
    out: str,
    settings: StudySettings | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or continue) a study under ``out``; return ``{"frame", "runs", "bundles", "report",
    "seconds"}``.

    ``frame`` is the tidy DataFrame written to ``study.csv``; ``runs`` the per-run results of
    :func:`run_one`; ``report`` the path of ``report.html`` (None without ``report``).
    """
    import pandas as pd

    from calibseg.bundles import create_bundle
    from calibseg.distributed import map_cases

    s = settings or StudySettings()
    s.check()
    t0 = time.perf_counter()
    bundles = {
        loss: create_bundle(
            s.data,
            loss,
            out=storage.join(out, "bundles"),
            data_root=s.data_root,
            overrides=s.overrides,
        )
        for loss in s.losses
    }
    tasks = [
        {
            "bundle": bundles[loss],
            "loss": loss,
            "seed": int(seed),
            "patience": int(s.patience),
            "temperature": s.temperature,
            "num_bins": int(s.num_bins),
            "threads": s.threads_per_run,
        }
        for seed in s.seeds
        for loss in s.losses
    ]
    runs = map_cases(
        run_one,
        tasks,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        description="study runs",
    )
    frame = pd.DataFrame([r for run in runs for r in run["rows"]])
    with storage.local_output(storage.join(out, "study.csv")) as tmp:
        frame.to_csv(tmp, index=False)
    meta = {
        "settings": asdict(s),
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
    }
    storage.write_text(storage.join(out, "study.json"), json.dumps(meta, indent=1, default=str))
    path = None
    if report:
        from calibseg.evaluate.study_report import write_report

        path = write_report(out, frame, runs, s)
    return {
        "frame": frame,
        "runs": runs,
        "bundles": bundles,
        "report": path,
        "seconds": time.perf_counter() - t0,
    }
