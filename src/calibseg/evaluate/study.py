"""Calibration studies: losses × seeds, trained with early stopping, evaluated on the test split,
with post-hoc temperature scaling of every model as a side-by-side alternative.

One run (bundle, seed) goes through: train (resumes; early stopping on the validation split) →
predict the validation and test splits with the best-Dice checkpoint → evaluate the test split
→ fit a temperature by NLL on the validation predictions, apply it to the test predictions
(``<bundle>/seed_<s>_temperature/``) and evaluate those. Each step is skipped when its output
exists, so rerunning a study continues where it stopped. Bundle runs fan out over Dask workers
(:func:`calibseg.distributed.map_cases`); each returns small per-case rows.

nnU-Net losses (``nnunet_dicece``, ``nnunet_hardl1ace``, ``nnunet_softl1ace``; extra
``calibseg[nnunet]``) train through nnU-Net's own pipeline on the same cases and splits as the
bundles (:mod:`calibseg.nnunet.study`: one raw dataset, planned and preprocessed once under
``<out>/nnunet/``, fold 0 = the study's training/validation split); their run folders
``<out>/nnunet/runs/<loss>/seed_<s>/`` hold predictions in the bundles' layout, so temperature
scaling, evaluation and the rows are the same code as for a bundle run. nnU-Net runs run one
after another in the calling process (nnU-Net's inference starts worker processes of its own,
which Dask's daemonic workers cannot), after the bundle runs.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from calibseg import storage
from calibseg.bundles import LOSSES as BUNDLE_LOSSES
from calibseg.bundles import create_bundle, read_splits, splits_at_run_time
from calibseg.data import get_dataset
from calibseg.distributed import map_cases
from calibseg.ensemble.io import load_nifti
from calibseg.evaluate.pipeline import (
    dataset_label_map,
    evaluate_predictions,
    evaluate_run,
    read_label,
)
from calibseg.nnunet import INSTALL_HINT
from calibseg.nnunet import LOSSES as NNUNET_TRAINER_LOSSES
from calibseg.nnunet import study_losses as nnunet_losses
from calibseg.nnunet.options import TrainOptions

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
        nnunet_options: run options of the nnU-Net losses (epochs, iterations per epoch, ACE
            weight and bins, min delta; :class:`~calibseg.nnunet.options.TrainOptions`); the
            seed and patience are the study's (``seeds``, ``patience`` in epochs without an
            EMA pseudo-Dice gain), so these two stay unset.
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
    nnunet_options: TrainOptions = field(default_factory=TrainOptions)

    def check(self) -> None:
        """Raise ValueError for settings a study cannot run."""
        if not self.losses:
            raise ValueError("a study needs at least one loss.")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"losses must be distinct, got {list(self.losses)}.")
        offered = nnunet_losses()
        for loss in self.losses:
            if loss in offered:
                continue
            if loss.removeprefix("nnunet_") in NNUNET_TRAINER_LOSSES:
                raise ValueError(f"{loss} is an nnU-Net loss and {INSTALL_HINT}")
            if loss not in BUNDLE_LOSSES:
                valid = ", ".join((*BUNDLE_LOSSES, *offered))
                raise ValueError(f"unknown loss {loss!r}; valid losses: {valid}.")
        o = self.nnunet_options
        if not isinstance(o, TrainOptions) or o.seed is not None or o.patience:
            raise ValueError(
                "nnunet_options must be TrainOptions without seed and patience (the study's "
                "seeds and patience are used)."
            )
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


def _load_prob_label(prob_path: str, label_path: str, label_map=None):
    """(probabilities [1, C, *sp] float32 tensor, labels [1, 1, *sp] int64 tensor; the
    dataset's ``label_map`` applied)."""
    import torch

    p = load_nifti(prob_path)[0].astype(np.float32, copy=False)
    y = np.rint(read_label(label_path, label_map)[0]).astype(np.int64)
    if p.shape[:-1] != y.shape:
        raise ValueError(
            f"{storage.redact(prob_path)} has grid {p.shape[:-1]}, its label {y.shape}."
        )
    prob = torch.from_numpy(np.ascontiguousarray(np.moveaxis(p, -1, 0)))[None]
    return prob, torch.from_numpy(y)[None, None]


def _temperature_run(
    run_root: str, run_name: str, splits: dict[str, list[dict]], mode: str, label_map=None
) -> dict[str, Any]:
    """Fit the temperature on the validation predictions of ``<run_root>/<run_name>``; write
    temperature-scaled test predictions into ``<run_root>/<run_name>_temperature/predictions``;
    return the fit. ``splits``: the study's items with label paths of this run; ``label_map``:
    the dataset's (raw label value → class index)."""
    import nibabel as nib
    import torch

    from calibseg.posthoc import apply_temperature, fit_temperature, nll

    pred = storage.join(run_root, run_name, "predictions")
    probs, labels = [], []
    for it in splits["validation"]:
        prob_path = storage.join(pred, f"{it['case']}_prob.nii.gz")
        p, y = _load_prob_label(prob_path, it["label"], label_map)
        probs.append(p.movedim(1, -1).reshape(-1, p.shape[1]))
        labels.append(y.reshape(-1))
    if not probs:
        raise ValueError(
            f"temperature scaling needs validation cases; {storage.redact(run_root)} has none."
        )
    vp, vy = torch.cat(probs), torch.cat(labels)
    t = fit_temperature(vp, vy, per_class=(mode == "per_class"))
    fit = {
        "mode": mode,
        "temperature": t.tolist(),
        "val_nll_before": nll(vp, vy),
        "val_nll_after": nll(vp, vy, t),
        "val_voxels": int(vy.numel()),
    }
    out = storage.join(run_root, run_name + TEMPERATURE_SUFFIX, "predictions")
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
    storage.write_json(
        storage.join(run_root, run_name + TEMPERATURE_SUFFIX, "temperature.json"), fit
    )
    return fit


def _evaluated(task: dict[str, Any], run_name: str, test_items: list[dict]) -> str:
    """The test evaluation folder of ``<run_root>/<run_name>``, evaluating it first when it has
    none: a bundle's run through :func:`evaluate_run`, an nnU-Net run (no bundle) through the
    same :func:`evaluate_predictions` with the study's classes."""
    run = storage.join(task["run_root"], run_name)
    eval_dir = storage.join(run, "evaluation")
    if storage.exists(storage.join(eval_dir, "summary.json")):
        return eval_dir
    if task["kind"] == "bundle":
        evaluate_run(task["bundle"], run_name=run_name, num_bins=task["num_bins"], progress=False)
    else:
        evaluate_predictions(
            storage.join(run, "predictions"),
            test_items,
            task["class_names"],
            eval_dir,
            num_bins=int(task["num_bins"]),
            progress=False,
            source={"run": storage.redact(run), "loss": task["loss"]},
            label_map=task.get("label_map"),
        )
    return eval_dir


def _train_and_predict_bundle(task: dict[str, Any]) -> dict[str, Any]:
    """Train a bundle run (resumes), predict its validation and test splits with the best
    checkpoint; return its training summary (history, best_epoch, epochs, early_stopped)."""
    from calibseg.bundles.runner import predict, train

    bundle, seed = task["bundle"], int(task["seed"])
    run = storage.join(bundle, f"seed_{seed}")
    train(bundle, seed=seed, patience=int(task["patience"]))
    pred = storage.join(run, "predictions")
    done = set(os.path.basename(p) for p in storage.ls(pred)) if storage.exists(pred) else set()
    splits = read_splits(bundle)  # case names only
    for split in ("validation", "test"):
        if any(f"{it['case']}_prob.nii.gz" not in done for it in splits[split]):
            predict(bundle, seed=seed, checkpoint="best", cases=split)
    return storage.read_json(storage.join(run, "training_summary.json"))


def _train_and_predict_nnunet(task: dict[str, Any]) -> dict[str, Any]:
    """Train an nnU-Net run on the study's prepared data (resumes), predict its validation and
    test splits with the best checkpoint into the study's layout; return its training summary."""
    # the nnU-Net extra is optional: its study module (which imports nnunetv2) is loaded only
    # for a study that names an nnU-Net loss
    from calibseg.nnunet import study as nn_study

    seed = int(task["seed"])
    options = replace(task["nnunet_options"], patience=int(task["patience"]))
    fold = nn_study.train_run(
        task["nnunet_root"], nn_study.trainer_loss(task["loss"]), seed, options
    )
    splits = read_splits(task["bundle"])  # case names only
    run = storage.join(task["run_root"], f"seed_{seed}")
    cases = [str(it["case"]) for split in ("validation", "test") for it in splits[split]]
    nn_study.predict_run(task["nnunet_root"], fold, cases, run)
    return nn_study.training_summary(fold)


def _run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One (loss, seed) of a study — a bundle run or an nnU-Net run (``task["kind"]``);
    resumable. Returns ``{"loss", "seed", "rows", "history", "temperature", "figures", …}``
    (rows: tidy dicts of per-case and micro values)."""
    loss, seed = task["loss"], int(task["seed"])
    run_name = f"seed_{seed}"
    run = storage.join(task["run_root"], run_name)
    marker = storage.join(run, _DONE)
    if storage.exists(marker):
        return storage.read_json(marker)
    if task["kind"] == "bundle":
        summary = _train_and_predict_bundle(task)
    else:
        summary = _train_and_predict_nnunet(task)
    splits = splits_at_run_time(task["bundle"])  # label paths under this run's data root
    variants = [("none", run_name)]
    fit = None
    if task["temperature"] != "none":
        ts_name = run_name + TEMPERATURE_SUFFIX
        fit_path = storage.join(task["run_root"], ts_name, "temperature.json")
        if storage.exists(fit_path):
            fit = storage.read_json(fit_path)
        else:
            fit = _temperature_run(
                task["run_root"], run_name, splits, task["temperature"], task.get("label_map")
            )
        variants.append(("temperature", ts_name))
    rows: list[dict[str, Any]] = []
    figures = {}
    for calib, name in variants:
        eval_dir = _evaluated(task, name, splits["test"])
        figures[calib] = storage.join(eval_dir, "dataset_reliability_diagram.png")
        base = {"loss": loss, "calibration": calib, "seed": seed}
        per_case = case_table(eval_dir)
        for case, values in per_case.iterrows():
            for m in CASE_METRICS:
                rows.append({**base, "case": str(case), "metric": m, "value": float(values[m])})
        for m, v in _micro(eval_dir).items():
            rows.append({**base, "case": "", "metric": m, "value": v})
    result = {
        "loss": loss,
        "seed": seed,
        "kind": task["kind"],
        "run": storage.redact(run),
        "bundle": storage.redact(task["bundle"]) if task["kind"] == "bundle" else None,
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


def _split_cases(bundle: str) -> dict[str, list[str]]:
    return {k: [str(it["case"]) for it in v] for k, v in read_splits(bundle).items()}


def _prepare_nnunet(root: str, reference: str, data: str) -> list[str]:
    """nnU-Net's data of the study (once; see :func:`calibseg.nnunet.study.prepare_dataset`)
    from the cases of ``reference``'s splits; returns the class names."""
    import yaml

    from calibseg.nnunet import study as nn_study  # optional extra, loaded when named

    cfg = yaml.safe_load(storage.read_text(storage.join(reference, "configs", "data.yaml")))
    names = [str(n) for n in cfg["class_names"]]
    spec = get_dataset(data)
    channels = ("CT",) if spec.intensity == "ct" else spec.channel_names
    processes = int(os.environ.get("nnUNet_def_n_proc") or 2)
    nn_study.prepare_dataset(
        root, splits_at_run_time(reference), names, channels, spec.label_map, processes
    )
    return names


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
    :func:`run_one`; ``bundles`` ``{bundle loss: bundle}``; ``report`` the path of
    ``report.html`` (None without ``report``). nnU-Net losses are prepared (converted,
    planned, preprocessed) once before the runs fan out.
    """
    import pandas as pd

    s = settings or StudySettings()
    s.check()
    t0 = time.perf_counter()

    def bundle_of(loss: str) -> str:
        return create_bundle(
            s.data,
            loss,
            out=storage.join(out, "bundles"),
            data_root=s.data_root,
            overrides=s.overrides,
        )

    bundles = {loss: bundle_of(loss) for loss in s.losses if loss in BUNDLE_LOSSES}
    nn_losses = [loss for loss in s.losses if loss not in BUNDLE_LOSSES]
    # the study's cases and splits: those of its bundles (all equal: same data and overrides);
    # a study of nnU-Net losses only takes them from the first bundle loss's bundle
    reference = next(iter(bundles.values())) if bundles else bundle_of(BUNDLE_LOSSES[0])
    cases = _split_cases(reference)
    for loss, b in bundles.items():
        if _split_cases(b) != cases:
            raise ValueError(
                f"the bundles of {s.losses[0]} and {loss} split the cases differently; a study "
                "compares losses on the same cases (use the same data and split overrides)."
            )
    base = {
        "patience": int(s.patience),
        "temperature": s.temperature,
        "num_bins": int(s.num_bins),
        "threads": s.threads_per_run,
        "label_map": dataset_label_map(s.data),  # raw label files are read with it
    }
    nn_root = storage.join(out, "nnunet")
    class_names: list[str] = []
    if nn_losses:
        class_names = _prepare_nnunet(nn_root, reference, s.data)
    tasks = []
    for seed in s.seeds:
        for loss in s.losses:
            task = {**base, "loss": loss, "seed": int(seed)}
            if loss in bundles:
                task.update(kind="bundle", bundle=bundles[loss], run_root=bundles[loss])
            else:
                task.update(
                    kind="nnunet",
                    bundle=reference,
                    run_root=storage.join(nn_root, "runs", loss),
                    nnunet_root=nn_root,
                    nnunet_options=s.nnunet_options,
                    class_names=class_names,
                )
            tasks.append(task)
    # bundle runs fan out over Dask; nnU-Net runs stay in this process (nnU-Net's inference
    # starts worker processes of its own, which Dask's daemonic workers cannot)
    fanned = [t for t in tasks if t["kind"] == "bundle"]
    here = [t for t in tasks if t["kind"] != "bundle"]
    done = map_cases(
        run_one,
        fanned,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        description="study runs",
    )
    done += map_cases(run_one, here, progress=progress, description="nnU-Net runs")
    by_task = {(r["loss"], int(r["seed"])): r for r in done}
    runs = [by_task[(t["loss"], t["seed"])] for t in tasks]
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
