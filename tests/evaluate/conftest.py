"""Hand-made run folders (bundle layout + predictions) with analytically known results."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

SPACING = (1.5, 1.0, 2.0)


def write_nifti(path: str, data: np.ndarray, spacing=SPACING) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path


def make_run(
    root,
    labels: list[np.ndarray],
    probs: list[np.ndarray],
    class_names: list[str],
    dataset: str = "synthetic",
    run_name: str = "seed_0",
) -> str:
    """A bundle folder with splits.json, configs/data.yaml and <run>/predictions/*_prob.nii.gz."""
    bundle = os.path.join(str(root), "bundle")
    items = []
    for i, (lab, prob) in enumerate(zip(labels, probs, strict=True)):
        case = f"case_{i:02d}"
        lp = write_nifti(
            os.path.join(bundle, "..", "data", f"{case}_label.nii.gz"), lab.astype(np.uint8)
        )
        items.append({"case": case, "image": lp, "label": os.path.abspath(lp)})
        write_nifti(
            os.path.join(bundle, run_name, "predictions", f"{case}_prob.nii.gz"),
            prob.astype(np.float32),
        )
    os.makedirs(os.path.join(bundle, "configs"), exist_ok=True)
    with open(os.path.join(bundle, "splits.json"), "w") as f:
        json.dump({"training": [], "validation": [], "test": items}, f)
    with open(os.path.join(bundle, "configs", "data.yaml"), "w") as f:
        f.write(f"dataset: {dataset}\nclass_names: {json.dumps(class_names)}\n")
    return bundle


def one_hot_last(label: np.ndarray, c: int) -> np.ndarray:
    return (label[..., None] == np.arange(c)).astype(np.float32)


def random_labels(n: int, shape=(10, 9, 8), c: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[2:7, 2:6, 2:6] = 1
        lab[5:9, 5:8, 4:7] = 2 if c > 2 else 1
        lab[rng.random(shape) < 0.05] = rng.integers(0, c)
        out.append(lab)
    return out


@pytest.fixture
def fake():
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(
        SPACING=SPACING,
        make_run=make_run,
        one_hot_last=one_hot_last,
        random_labels=random_labels,
        write_nifti=write_nifti,
    )


@pytest.fixture
def no_figures(monkeypatch):
    """Skip drawing (slow, and covered by the tests that check the figure files)."""
    from calibseg.evaluate import pipeline

    monkeypatch.setattr(pipeline, "_figures", lambda *a, **k: [])
