"""Multi-rater data → nnU-Net v2 raw datasets: one per rater, optionally one on the majority vote.

Sources (read with :func:`calibseg.ensemble.io.load_rater_items`): calibseg's
synthetic set (a ``dataset.json`` whose items list ``"raters"``) or a CURVAS-style root
(``<case>/image.nii.gz``, ``annotation_1..K.nii.gz``).

For rater k the dataset ``Dataset<base_id + k - 1>_<name>Rater<k>`` is written under
``nnUNet_raw``; the majority vote (per voxel the label most raters gave, ties to the lower
label) gets the next id as ``Dataset<id>_<name>Majority``. Each holds nnU-Net's layout::

    imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   imagesTs/<case>_0000.nii.gz
    dataset.json  (channel_names, labels, numTraining, file_ending)

Test cases (``test_cases``, the last ones in case order) go to ``imagesTs`` only. Images are
the source files unchanged (hard links when possible); labels are written with the image's
affine. Each dataset folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.transforms import VoteEnsemble

from calibseg import storage
from calibseg.ensemble.io import load_rater_items

__all__ = [
    "RawDataset",
    "majority_vote",
    "convert_multirater",
    "dataset_folder_name",
    "load_label",
    "save_label",
    "place_image",
]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class RawDataset(dict):
    """One written dataset: keys ``id``, ``name`` (``DatasetXXX_…``), ``path``, ``rater``
    (1-based int, or ``"majority"``), ``train`` and ``test`` (case ids)."""


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``Dataset%03d_<name>``. Raises ValueError for ids outside 1..999."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}.")
    return f"Dataset{int(dataset_id):03d}_{name}"


def majority_vote(labels: Sequence[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Per voxel the label given by most raters; ties go to the lower label
    (``monai.transforms.VoteEnsemble``).

    ``labels``: K integer arrays of one shape. Returns uint8 (uint16 beyond 256 classes).
    """
    if not labels:
        raise ValueError("majority_vote needs at least one rater label map.")
    stack = [np.asarray(lab).astype(np.int64) for lab in labels]
    if min(int(a.min()) for a in stack) < 0:
        raise ValueError("label maps must be non-negative integers.")
    n = max(int(a.max()) for a in stack) + 1 if num_classes is None else int(num_classes)
    voted = VoteEnsemble(num_classes=n)([torch.from_numpy(a)[None] for a in stack])
    return np.asarray(voted[0]).astype(np.uint8 if n <= 256 else np.uint16)


def load_label(path: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A label map (int64 array) and its image; ValueError unless non-negative integers."""
    with storage.local_path(path) as local:
        img = nib.load(local)
        data = np.asarray(img.dataobj)
    rounded = np.rint(data)
    if not np.allclose(data, rounded) or rounded.min() < 0:
        raise ValueError(f"{path} is not a label map of non-negative integers.")
    return rounded.astype(np.int64), img


def save_label(path: str, data: np.ndarray, ref: nib.Nifti1Image) -> None:
    """Write ``data`` as a uint8 label map on the grid and header of ``ref``."""
    img = nib.Nifti1Image(data.astype(np.uint8), ref.affine, ref.header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    nib.save(img, path)


def place_image(src: str, dest: str) -> None:
    """Hard-link ``src`` (local or fetched) to ``dest``, copying where links are impossible."""
    with storage.local_path(src) as local:
        try:
            os.link(local, dest)
        except OSError:
            shutil.copyfile(local, dest)


def convert_multirater(
    source: str,
    raw_root: str,
    base_id: int,
    name: str = "Calibseg",
    majority: bool = True,
    test_cases: int = 0,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[RawDataset]:
    """Write one nnU-Net raw dataset per rater (and the majority vote) under ``raw_root``.

    Args:
        source: synthetic ``dataset.json`` (or its folder) or a CURVAS-style root.
        raw_root: nnU-Net's ``nnUNet_raw`` folder (local).
        base_id: dataset id of rater 1; rater k gets ``base_id + k - 1``, the majority vote
            ``base_id + K``.
        name: dataset name stem (letters and digits).
        majority: also write the majority-vote dataset.
        test_cases: the last N cases (sorted by id) go to ``imagesTs`` only.
        class_names: label names, background first (default: the source's, else
            ``background, class1, …``).
        overwrite: replace existing datasets of the same ids; otherwise FileExistsError.

    Returns the written datasets in id order. Raises ValueError for inconsistent raters
    (different counts or shapes per case) or bad arguments.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"dataset name must be letters and digits starting with a letter: {name!r}."
        )
    items, src_names = load_rater_items(source)
    items = sorted(items, key=lambda it: str(it["case"]))
    if any(not it.get("image") for it in items):
        raise ValueError(f"every case needs an image; {source} lists cases without one.")
    n_raters = {len(it["raters"]) for it in items}
    if len(n_raters) != 1:
        raise ValueError(f"cases have different numbers of raters {sorted(n_raters)}.")
    k_raters = n_raters.pop()
    if not 0 <= test_cases < len(items):
        raise ValueError(f"test_cases must be in 0..{len(items) - 1}, got {test_cases}.")
    train_items = items[: len(items) - test_cases]
    test_items = items[len(items) - test_cases :]

    targets: list[tuple[int, str, int | str]] = [
        (base_id + k, f"{name}Rater{k + 1}", k + 1) for k in range(k_raters)
    ]
    if majority:
        targets.append((base_id + k_raters, f"{name}Majority", "majority"))
    folders = [dataset_folder_name(i, n) for i, n, _ in targets]
    os.makedirs(raw_root, exist_ok=True)
    taken = {
        m.group(1): d
        for d in os.listdir(raw_root)
        if (m := re.match(r"^Dataset(\d{3})_", d)) and os.path.isdir(os.path.join(raw_root, d))
    }
    for i, _, _ in targets:
        other = taken.get(f"{i:03d}")
        if other is not None and not overwrite:
            raise FileExistsError(
                f"dataset id {i} exists in {raw_root} ({other}); use another id or --overwrite."
            )

    # labels of every case, read once; the majority vote from the same arrays
    tmp_dirs = [tempfile.mkdtemp(prefix=f".{f}.", dir=raw_root) for f in folders]
    try:
        for d in tmp_dirs:
            for sub in ("imagesTr", "labelsTr", "imagesTs"):
                os.makedirs(os.path.join(d, sub))
        max_label = 0
        for it in items:
            case = str(it["case"])
            is_test = it in test_items
            img_sub = "imagesTs" if is_test else "imagesTr"
            for d in tmp_dirs:
                place_image(it["image"], os.path.join(d, img_sub, f"{case}_0000.nii.gz"))
            if is_test:
                continue
            labs = [load_label(p) for p in it["raters"]]
            shapes = {lab.shape for lab, _ in labs}
            if len(shapes) != 1:
                raise ValueError(f"case {case}: rater label maps have different shapes {shapes}.")
            max_label = max(max_label, *(int(lab.max()) for lab, _ in labs))
            for (_, _, rater), d in zip(targets, tmp_dirs, strict=True):
                if rater == "majority":
                    data = majority_vote([lab for lab, _ in labs])
                else:
                    data = labs[int(rater) - 1][0]
                save_label(os.path.join(d, "labelsTr", f"{case}.nii.gz"), data, labs[0][1])
        names = list(class_names or src_names or [])
        if not names:
            names = ["background"] + [f"class{c}" for c in range(1, max_label + 1)]
        if len(names) <= max_label:
            raise ValueError(
                f"labels go up to {max_label} but only {len(names)} class names are given."
            )
        out: list[RawDataset] = []
        for (i, _, rater), folder, d in zip(targets, folders, tmp_dirs, strict=True):
            meta = {
                "channel_names": {"0": "image"},
                "labels": {n: c for c, n in enumerate(names)},
                "numTraining": len(train_items),
                "file_ending": ".nii.gz",
                "name": folder,
                "description": f"calibseg multi-rater conversion of {source} (rater {rater})",
            }
            storage.write_json(os.path.join(d, "dataset.json"), meta)
            final = os.path.join(raw_root, folder)
            old = taken.get(f"{i:03d}")
            if old is not None:
                shutil.rmtree(os.path.join(raw_root, old))
            os.replace(d, final)
            out.append(
                RawDataset(
                    id=i,
                    name=folder,
                    path=final,
                    rater=rater,
                    train=[str(t["case"]) for t in train_items],
                    test=[str(t["case"]) for t in test_items],
                )
            )
        return out
    finally:
        for d in tmp_dirs:
            if os.path.isdir(d):
                shutil.rmtree(d)
