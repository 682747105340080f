"""``calibseg predict``: the bundle's ``inference`` workflow for a trained run.

The evaluator is the one ``python -m monai.bundle run inference`` builds (``infer#evaluator``
in ``configs/inference_pred.yaml``: sliding-window softmax, MONAI ``Invertd`` back to each
image's original grid, ``SaveImaged``); this layer picks the checkpoint and loads it safely
(``torch.load(weights_only=True)``, foreign bundles refused), chooses the cases, optionally maps
the label maps back to the dataset's raw label values (MONAI ``MapLabelValue``), and writes each
file atomically into ``<run>/predictions/`` (a local folder or ``s3://``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import nibabel as nib
import numpy as np
from monai.transforms import MapLabelValue

from calibseg import storage, storage_mirror
from calibseg.bundles import (
    BUNDLE_FILES,
    DATA_ROOT_FILE,
    load_bundle,
    read_splits,
    require_bundle,
    resolve_data_root,
)
from calibseg.bundles.checkpoint import checkpoint_path, load_weights
from calibseg.data import get_dataset

__all__ = ["predict", "run_dir", "to_raw_labels"]

logger = logging.getLogger(__name__)


def run_dir(bundle: str, seed: int = 0, run_name: str | None = None) -> str:
    """The run folder ``<bundle>/<run_name or seed_<seed>>``."""
    return storage.join(str(bundle), run_name or f"seed_{seed}")


def predict(
    bundle: str,
    seed: int = 0,
    checkpoint: str = "best",
    run_name: str | None = None,
    cases: str | list[dict] = "test",
    float16: bool = False,
    data_root: str | None = None,
    raw_labels: bool = False,
) -> str:
    """Predict a split (or given items) with a trained run; return the predictions folder.

    Writes ``<run>/predictions/<case>_prob.nii.gz`` (softmax probabilities [x, y, z, C],
    channel last, on the original image grid with the image's affine; float32, or 16-bit
    integers with a scale slope when ``float16``, since NIfTI has no float16) and
    ``<case>_seg.nii.gz`` (argmax class indices, uint8; with ``raw_labels`` the dataset's raw
    label values, the inverse of its ``label_map``: BraTS 2021's enhancing tumour as 4, as its
    submissions expect). ``checkpoint``: best | final | last | a path. ``cases``: a split name or
    data items (``{"case", "image"}``). Each file appears complete or not at all. Raises
    FileNotFoundError (no checkpoint), ValueError (a refused checkpoint, an unknown split,
    repeated case ids, a ``label_map`` that cannot be inverted).
    """
    require_bundle(bundle)
    run = run_dir(bundle, seed, run_name)
    ckpt = checkpoint_path(run, checkpoint)
    local_bundle = str(bundle)
    if storage.is_remote(bundle):
        local_bundle = storage_mirror.stage_bundle(
            bundle, (*BUNDLE_FILES, "splits.json", DATA_ROOT_FILE)
        )
    if isinstance(cases, str):
        splits = read_splits(local_bundle, resolve_data_root(local_bundle, data_root))
        if cases not in splits:
            raise ValueError(f"unknown split {cases!r}; choose one of {', '.join(splits)}.")
        cases = splits[cases]
    items = [{k: it[k] for k in ("case", "image")} for it in cases]
    ids = [str(it["case"]) for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to name prediction files.")
    out_dir = storage.join(run, "predictions")
    staging = tempfile.mkdtemp(prefix="calibseg-predict-")
    # every override before anything is parsed: setting a config id resets parsed objects
    parser = load_bundle(
        local_bundle,
        overrides={
            "bundle_root": local_bundle,
            "seed": seed,
            "pred_float16": bool(float16),
            "pred_datalist": items,
            "pred_dir": staging,
            "infer#handlers": [],  # the weights are loaded below
            **({"data_root": str(data_root)} if data_root else {}),
        },
    )
    try:
        raw = (
            get_dataset(parser.get_parsed_content("dataset")).raw_label_map() if raw_labels else {}
        )
        network = parser.get_parsed_content("network_def")
        load_weights(network, ckpt, local_bundle)  # refused before anything is written
        network.to(parser.get_parsed_content("device")).eval()
        storage.makedirs(out_dir)
        parser.get_parsed_content("infer#evaluator").run()
        for name in sorted(os.listdir(staging)):
            if raw and name.endswith("_seg.nii.gz"):
                to_raw_labels(os.path.join(staging, name), raw)
            _publish(os.path.join(staging, name), storage.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d predictions to %s", len(items), storage.redact(out_dir))
    return out_dir


def to_raw_labels(path: str, raw: dict[int, int]) -> None:
    """Rewrite the local label map ``path`` (NIfTI of class indices) with raw label values:
    class ``c`` → ``raw[c]``, other classes unchanged (MONAI ``MapLabelValue``); the affine and
    header are kept, the dtype is uint8 unless a raw value needs int16."""
    img = nib.load(path)
    labels = np.asarray(img.dataobj)
    dtype = np.uint8 if max(raw.values(), default=0) <= 255 else np.int16
    mapped = MapLabelValue(orig_labels=list(raw), target_labels=list(raw.values()), dtype=dtype)(
        labels
    )
    out = nib.Nifti1Image(np.asarray(mapped, dtype), img.affine, img.header)
    out.set_data_dtype(dtype)
    tmp = path + ".part.nii.gz"
    nib.save(out, tmp)
    os.replace(tmp, path)


def _publish(local: str, target: str) -> None:
    """Put a finished file in place: one atomic write (local rename or single upload)."""
    with open(local, "rb") as f:
        storage.write_bytes(target, f.read())
