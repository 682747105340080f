"""nnU-Net losses inside a calibration study (``calibseg study --losses …,nnunet_hardl1ace``).

The study owns its outputs, so everything nnU-Net reads or writes lives under one folder
``<root>`` (``<study out>/nnunet``) instead of the user's ``nnUNet_*`` folders: a study is
self-contained, resumable and can be deleted as one folder.

- ``<root>/raw/Dataset001_CalibsegStudy/``: the study's cases converted once — ``imagesTr`` /
  ``labelsTr`` = the training + validation cases of the study's splits, ``imagesTs`` = its test
  cases; ``<root>/inputs/`` holds the validation and test images, the inference input of
  every run (one nnU-Net prediction per run). Labels are written as class indices (the dataset's ``label_map`` applied).
- ``<root>/preprocessed/Dataset001_CalibsegStudy/``: planned and preprocessed once (shared by
  every nnU-Net loss and seed), with a ``splits_final.json`` whose fold 0 trains on the study's
  training cases and validates (pseudo-Dice, early stopping) on its validation cases.
- ``<root>/results/seed_<s>/``: the ``nnUNet_results`` of seed s (one model folder per
  trainer, a normal nnU-Net results folder).
- ``<root>/runs/<loss>/seed_<s>/``: the study's run folder of (loss, seed): nnU-Net's own
  predictions (``nnunet_predictions/<case>.npz`` + ``.nii.gz``) and the study's layout of them,
  ``predictions/<case>_prob.nii.gz`` (channel-last ``[x, y, z, C]`` on the original image
  grid) and ``<case>_seg.nii.gz`` — what temperature scaling and evaluation read.

``<root>/prepared.json`` (written last) records the cases and classes the data was prepared
for; a rerun with other splits or classes is refused instead of mixing two studies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import MapLabelValue

from calibseg import storage
from calibseg.ensemble.io import read_probabilities
from calibseg.nnunet import LOSSES
from calibseg.nnunet.convert import dataset_folder_name, load_label, place_image, save_label
from calibseg.nnunet.options import TrainOptions
from calibseg.nnunet.runner import (
    load_checkpoint,
    model_folder,
    nnunet_env,
    plan_and_preprocess,
    predict,
    train,
)
from calibseg.nnunet.trainers import OPTIONS_FILE

__all__ = [
    "DATASET_ID",
    "DATASET",
    "CONFIGURATION",
    "SPLITS",
    "folders",
    "trainer_loss",
    "prepare_dataset",
    "train_run",
    "predict_run",
    "npz_to_prediction",
    "training_summary",
]

DATASET_ID = 1
DATASET = dataset_folder_name(DATASET_ID, "CalibsegStudy")
CONFIGURATION = "3d_fullres"
#: the study's splits in the order nnU-Net sees them (imagesTr = training + validation)
SPLITS = ("training", "validation", "test")
_PREPARED = "prepared.json"


def folders(root: str) -> dict[str, str]:
    """nnU-Net's folders of a study: ``{"nnUNet_raw", "nnUNet_preprocessed"}`` under ``root``."""
    return {
        "nnUNet_raw": os.path.join(root, "raw"),
        "nnUNet_preprocessed": os.path.join(root, "preprocessed"),
    }


def trainer_loss(study_loss: str) -> str:
    """``nnunet_hardl1ace`` → ``hardl1ace`` (the runner's ``--loss``). Raises ValueError for a
    name that is not an nnU-Net study loss."""
    loss = study_loss.removeprefix("nnunet_")
    if not study_loss.startswith("nnunet_") or loss not in LOSSES:
        raise ValueError(
            f"{study_loss!r} is not an nnU-Net study loss "
            f"({', '.join('nnunet_' + x for x in LOSSES)})."
        )
    return loss


def _local_root(root: str) -> str:
    if storage.is_remote(root):
        raise ValueError(
            f"nnU-Net losses need a local study folder (nnU-Net reads and writes local files), "
            f"got {storage.redact(root)}."
        )
    return os.path.abspath(root)


def _images(item: Mapping[str, Any]) -> list[str]:
    image = item.get("image")
    images = [image] if isinstance(image, str) else list(image or [])
    if not images:
        raise ValueError(f"case {item.get('case')!r} has no image.")
    return images


def _write_label(src: str, dest: str, num_classes: int, label_map: Mapping[int, int] | None):
    data, ref = load_label(src)
    if label_map:  # the dataset's map, applied as its training pipeline does (MONAI)
        orig, target = zip(*sorted(label_map.items()), strict=True)
        data = MapLabelValue(orig_labels=list(orig), target_labels=list(target))(data)
    if int(data.max()) >= num_classes:
        raise ValueError(
            f"{storage.redact(src)} has label {int(data.max())}; the study has {num_classes} "
            "classes."
        )
    save_label(dest, data, ref)


def _link_images(items: Sequence[Mapping[str, Any]], folder: str) -> None:
    for it in items:
        for k, image in enumerate(_images(it)):
            place_image(image, os.path.join(folder, f"{it['case']}_{k:04d}.nii.gz"))


def prepare_dataset(
    root: str,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    class_names: Sequence[str],
    channel_names: Sequence[str] = ("image",),
    label_map: Mapping[int, int] | None = None,
    num_processes: int = 2,
) -> dict[str, Any]:
    """Convert the study's cases into one nnU-Net raw dataset, plan and preprocess it once and
    give it the study's split as fold 0 (see the module docstring); skipped when ``root``
    already holds it. Returns the ``prepared.json`` record.

    ``splits``: ``{"training", "validation", "test": [{"case", "image", "label"}]}`` with
    paths under the run's data root (:func:`calibseg.bundles.splits_at_run_time`);
    ``channel_names``: nnU-Net's names of the image channels (``"CT"`` selects its CT
    normalisation). Raises ValueError for a remote ``root``, an empty training or validation
    split, or a ``root`` prepared for other cases or classes.
    """
    root = _local_root(root)
    cases = {k: [str(it["case"]) for it in splits.get(k, [])] for k in SPLITS}
    for k in ("training", "validation"):
        if not cases[k]:
            raise ValueError(f"nnU-Net losses need {k} cases; the study's splits have none.")
    record = {
        "dataset": DATASET,
        "configuration": CONFIGURATION,
        "class_names": [str(n) for n in class_names],
        **cases,
    }
    marker = os.path.join(root, _PREPARED)
    if os.path.isfile(marker):
        found = storage.read_json(marker)
        if found != record:
            raise ValueError(
                f"{root} holds nnU-Net data prepared for other cases or classes; the study's "
                "splits changed: use a new --out."
            )
        return found
    env = folders(root)
    raw, pre = env["nnUNet_raw"], env["nnUNet_preprocessed"]
    for parent in (raw, pre):  # leftovers of an interrupted preparation
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(os.path.join(parent, DATASET), ignore_errors=True)
    channels = list(channel_names)
    n_channels = len(_images(splits["training"][0]))
    if len(channels) != n_channels:
        channels = [f"channel{k}" for k in range(n_channels)]
    tmp = tempfile.mkdtemp(prefix=f".{DATASET}.", dir=raw)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            os.makedirs(os.path.join(tmp, sub))
        labelled = [*splits["training"], *splits["validation"]]
        _link_images(labelled, os.path.join(tmp, "imagesTr"))
        for it in labelled:
            dest = os.path.join(tmp, "labelsTr", f"{it['case']}.nii.gz")
            _write_label(it["label"], dest, len(class_names), label_map)
        _link_images(splits.get("test", []), os.path.join(tmp, "imagesTs"))
        storage.write_json(
            os.path.join(tmp, "dataset.json"),
            {
                "channel_names": {str(k): n for k, n in enumerate(channels)},
                "labels": {str(n): c for c, n in enumerate(class_names)},
                "numTraining": len(labelled),
                "file_ending": ".nii.gz",
                "name": DATASET,
                "description": "calibseg study: training + validation cases (imagesTr), "
                "test cases (imagesTs)",
            },
        )
        os.replace(tmp, os.path.join(raw, DATASET))
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    with nnunet_env(**env):
        plan_and_preprocess([DATASET_ID], (CONFIGURATION,), num_processes)
    storage.write_json(
        os.path.join(pre, DATASET, "splits_final.json"),
        [{"train": cases["training"], "val": cases["validation"]}],
    )
    inputs = os.path.join(root, "inputs")
    shutil.rmtree(inputs, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=".inputs.", dir=root)
    _link_images([*splits["validation"], *splits.get("test", [])], tmp)
    os.replace(tmp, inputs)
    storage.write_json(marker, record)
    return record


def train_run(root: str, loss: str, seed: int, options: TrainOptions | None = None) -> str:
    """Train (or resume, or skip when finished) the model of ``(loss, seed)`` on the prepared
    data: fold 0 of the study's split, ``options`` with ``seed``; returns its fold folder
    ``<root>/results/seed_<s>/<dataset>/<Trainer>__nnUNetPlans__3d_fullres/fold_0``.

    ``loss``: the runner's loss (``dicece``, ``hardl1ace``, ``softl1ace``). Raises
    FileNotFoundError when :func:`prepare_dataset` has not run.
    """
    root = _local_root(root)
    if not os.path.isfile(os.path.join(root, _PREPARED)):
        raise FileNotFoundError(f"no prepared nnU-Net data in {root}: prepare_dataset first.")
    results = os.path.join(root, "results", f"seed_{int(seed)}")
    with nnunet_env(**folders(root)):
        fold = os.path.join(
            model_folder(DATASET_ID, CONFIGURATION, loss, results=results), "fold_0"
        )
        if os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
            return fold
        resume = os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))
        return train(
            DATASET_ID,
            CONFIGURATION,
            0,
            loss=loss,
            options=replace(options or TrainOptions(), seed=int(seed)),
            results=results,
            continue_training=resume,
            validate=False,
        )


def npz_to_prediction(npz: str, dest: str, case: str) -> None:
    """nnU-Net's ``<case>.npz`` (``probabilities`` [C, z, y, x], beside its ``<case>.nii.gz``)
    → ``<dest>/<case>_seg.nii.gz`` (argmax, uint8) and ``<dest>/<case>_prob.nii.gz``
    (float32 ``[x, y, z, C]``) on the original image grid with nnU-Net's affine; each file
    atomic, the probabilities last."""
    prob, affine = read_probabilities(npz)  # [C, x, y, z] on the original grid
    q = np.ascontiguousarray(prob.movedim(0, -1).numpy())
    storage.makedirs(dest)
    for suffix, arr in (("seg", q.argmax(-1).astype(np.uint8)), ("prob", q)):
        with storage.local_output(storage.join(dest, f"{case}_{suffix}.nii.gz")) as tmp:
            nib.save(nib.Nifti1Image(arr, affine), tmp)


def predict_run(
    root: str, fold: str, cases: Sequence[str], run_dir: str, device: str = "cpu"
) -> str:
    """Predict the study's validation and test cases (``<root>/inputs``) with the best
    checkpoint (highest EMA pseudo-Dice) of ``fold`` into ``<run_dir>/nnunet_predictions/``
    (nnU-Net's files, one nnU-Net call), then the study's layout ``<run_dir>/predictions/`` for
    ``cases``. Steps already done are skipped. Returns the predictions folder."""
    raw = os.path.join(run_dir, "nnunet_predictions")
    if not os.path.isdir(raw):
        predict(
            os.path.dirname(fold),
            os.path.join(_local_root(root), "inputs"),
            raw,
            folds=(0,),
            checkpoint="checkpoint_best.pth",
            device=device,
        )
    dest = os.path.join(run_dir, "predictions")
    for case in cases:
        if not os.path.isfile(os.path.join(dest, f"{case}_prob.nii.gz")):
            npz_to_prediction(os.path.join(raw, f"{case}.npz"), dest, case)
    return dest


def training_summary(fold: str) -> dict[str, Any]:
    """From a finished fold folder: ``{"history": [{"epoch", "pseudo_dice",
    "ema_pseudo_dice", "train_loss", "val_loss"}], "best_epoch" (highest EMA pseudo-Dice,
    1-based), "epochs" (run), "early_stopped"}``."""
    ck = load_checkpoint(os.path.join(fold, "checkpoint_final.pth"))
    logs = ck.get("logging", {})
    keys = {
        "pseudo_dice": "mean_fg_dice",
        "ema_pseudo_dice": "ema_fg_dice",
        "train_loss": "train_losses",
        "val_loss": "val_losses",
    }
    epochs = int(ck["current_epoch"])
    history = [
        {"epoch": e + 1, **{k: float(logs[src][e]) for k, src in keys.items() if src in logs}}
        for e in range(epochs)
    ]
    ema = [h.get("ema_pseudo_dice", float("nan")) for h in history]
    options = storage.read_json(os.path.join(fold, OPTIONS_FILE))
    return {
        "history": history,
        "best_epoch": int(np.nanargmax(ema)) + 1 if np.isfinite(ema).any() else None,
        "epochs": epochs,
        "early_stopped": epochs < int(options["epochs"]),
    }
