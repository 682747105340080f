"""Reading member predictions and writing ensemble outputs.

Two member formats, detected by extension:

- calibseg: ``<case>_prob.nii.gz`` — float NIfTI ``[x, y, z, C]`` (channel last).
- nnU-Net: ``<case>.npz`` with key ``probabilities`` ``[C, z, y, x]`` (background first); the
  affine is taken from the sibling ``<case>.nii.gz`` segmentation when present (identity
  otherwise).

Both are returned as ``[C, x, y, z]`` (classes first) float32 tensors plus the 4×4 affine.
:func:`load_nifti` is the one NIfTI reader of the run evaluation, the ensembles and the
multi-rater table; :func:`load_rater_items` lists the rater label maps of a multi-rater dataset.
"""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
import torch

from calibseg import storage
from calibseg.data.scanners import MULTIRATER_CLASS_NAMES, scan_multirater

__all__ = [
    "PROB_SUFFIX",
    "prediction_folder",
    "list_cases",
    "load_nifti",
    "load_rater_items",
    "read_probabilities",
    "read_label",
    "write_nifti",
]

log = logging.getLogger(__name__)

PROB_SUFFIX = "_prob.nii.gz"
_NPZ = ".npz"


def prediction_folder(path: str) -> str:
    """The folder holding predictions: ``path`` itself or its ``predictions/`` subfolder."""
    p = str(path).rstrip("/")
    if not storage.exists(p):
        raise FileNotFoundError(f"no such prediction folder: {path}")
    sub = storage.join(p, "predictions")
    if storage.exists(sub) and storage.isdir(sub):
        return sub
    if not storage.isdir(p):
        raise ValueError(f"{path} is not a folder of predictions.")
    return p


def list_cases(folder: str) -> dict[str, str]:
    """Map case id → probability file in a prediction folder (``*_prob.nii.gz`` or nnU-Net
    ``*.npz``). Raises FileNotFoundError if there is none."""
    names = storage.ls(folder)
    ours = {
        n[: -len(PROB_SUFFIX)]: storage.join(folder, n) for n in names if n.endswith(PROB_SUFFIX)
    }
    if ours:
        return dict(sorted(ours.items()))
    npz = {n[: -len(_NPZ)]: storage.join(folder, n) for n in names if n.endswith(_NPZ)}
    if npz:
        return dict(sorted(npz.items()))
    raise FileNotFoundError(
        f"no predictions in {folder}: expected <case>{PROB_SUFFIX} (calibseg) or <case>.npz "
        "(nnU-Net with --save_probabilities)."
    )


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A NIfTI file (local path or URL) → (voxel array in its stored dtype, affine ``[4, 4]``
    float64, spacing of the first three axes in mm).

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    if not storage.exists(path):
        raise FileNotFoundError(f"no such file: {storage.redact(str(path))}")
    with storage.local_path(path) as local:
        img = nib.load(local)
        data = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, affine, zooms  # type: ignore[return-value]


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
    return items, list(MULTIRATER_CLASS_NAMES)


def read_probabilities(path: str) -> tuple[torch.Tensor, np.ndarray]:
    """Probabilities ``[C, x, y, z]`` float32 and the affine ``[4, 4]`` of one member file."""
    if str(path).endswith(_NPZ):
        with storage.local_path(path) as local, np.load(local) as z:
            if "probabilities" not in z:
                raise ValueError(f"{path} has no 'probabilities' array (keys: {list(z.keys())}).")
            arr = np.asarray(z["probabilities"], dtype=np.float32)
        if arr.ndim != 4:
            raise ValueError(f"{path}: probabilities must be [C, z, y, x], got shape {arr.shape}.")
        prob = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 2, 1)))
        seg = str(path)[: -len(_NPZ)] + ".nii.gz"
        if storage.exists(seg):
            affine = load_nifti(seg)[1]
        else:
            log.info("no %s beside %s; using an identity affine", os.path.basename(seg), path)
            affine = np.eye(4)
    else:
        data, affine, _ = load_nifti(path)
        data = data.astype(np.float32, copy=False)
        if data.ndim == 5 and data.shape[3] == 1:
            data = data[:, :, :, 0, :]
        if data.ndim != 4:
            raise ValueError(
                f"{path}: probabilities must be a 4-D NIfTI [x, y, z, C], got shape {data.shape}."
            )
        prob = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))
    if not bool(torch.isfinite(prob).all()):
        raise ValueError(f"{path} contains NaN or Inf probabilities.")
    lo, hi = float(prob.min()), float(prob.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{path}: probabilities must lie in [0, 1], got [{lo:.4g}, {hi:.4g}].")
    return prob.clamp_(0.0, 1.0), affine


def read_label(path: str) -> tuple[torch.Tensor, np.ndarray, tuple[float, float, float]]:
    """Integer label map ``[x, y, z]`` (int64), its affine and voxel spacing (mm)."""
    data, affine, zooms = load_nifti(path)
    data = np.squeeze(data)
    if data.ndim != 3:
        raise ValueError(f"{path}: a label map must be 3-D, got shape {data.shape}.")
    return torch.from_numpy(np.rint(data).astype(np.int64)), affine, zooms


def write_nifti(path: str, array: np.ndarray | torch.Tensor, affine: np.ndarray, dtype) -> None:
    """Write ``array`` (spatial axes first) as NIfTI atomically (any storage path)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with storage.local_output(path) as tmp:
        nib.save(img, tmp)
