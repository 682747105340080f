"""Synthetic multi-rater 3D segmentation data, generated on demand.

Each case holds a hidden "true" anatomy with three foreground classes:

1. ``organ``  — a large smooth blob, bright;
2. ``vessel`` — a medium blob touching the organ, lower contrast against background;
3. ``lesion`` — a small blob nested inside the organ, low contrast against it.

Shapes are level sets ``f > 0`` of ``1 - ellipsoid distance + smooth noise`` (``f`` is
roughly the fraction of the radius left to the boundary). The image is the blurred class
intensity map (partial volume), times a smooth multiplicative bias field, plus Gaussian
noise. Each rater delineates the same anatomy with a systematic per-rater bias (a level
offset per class, i.e. a consistent dilation or erosion) and a smooth rater-specific boundary
perturbation, so raters disagree along boundaries. The majority vote of the raters is the
reference ``label`` (ties go to the lower class index).

Layout (Decathlon style)::

    out_dir/dataset.json
    out_dir/imagesTr/synth_000.nii.gz            float32 image
    out_dir/labelsTr/synth_000.nii.gz            uint8 majority-vote label
    out_dir/labelsTr/synth_000_rater1.nii.gz     uint8 rater labels (1-based)

Everything is deterministic given ``seed`` (same arrays and same file bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calibseg import storage

__all__ = ["CLASS_NAMES", "DEFAULT_SPACING", "generate", "make_case"]

CLASS_NAMES: list[str] = ["background", "organ", "vessel", "lesion"]
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 2.0)

# class intensities of the clean image (background 0)
_INTENSITY = np.array([0.0, 1.0, 0.65, 1.55], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _blob(
    grid: np.ndarray,
    centre: np.ndarray,
    radii: np.ndarray,
    noise: np.ndarray,
    roughness: float,
) -> np.ndarray:
    """Level-set function of a smooth random blob: ``1 - ellipsoid distance + roughness*noise``.

    ``grid`` [3, X, Y, Z] voxel coordinates (mm), ``centre`` [3], ``radii`` [3] in mm.
    """
    d = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    return (1.0 - d + roughness * noise).astype(np.float32)


def _compose(levels: np.ndarray) -> np.ndarray:
    """Class map from per-class level sets [3, ...]: organ, vessel outside organ, lesion inside organ."""
    organ, vessel, lesion = levels > 0
    label = np.zeros(levels.shape[1:], dtype=np.uint8)
    label[vessel & ~organ] = 2
    label[organ] = 1
    label[lesion & organ] = 3
    return label


def make_case(
    rng: np.random.Generator,
    shape: Sequence[int] = (48, 48, 32),
    n_raters: int = 3,
    spacing: Sequence[float] = DEFAULT_SPACING,
    rater_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case.

    Returns ``(image [X,Y,Z] float32, truth [X,Y,Z] uint8, raters [K,X,Y,Z] uint8,
    majority [X,Y,Z] uint8)``. ``rater_bias`` [K, 3] are per-rater, per-class level offsets
    (positive = dilation); drawn from ``rng`` when not given.
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float32)
    extent = np.asarray(shape, dtype=np.float32) * sp  # mm
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    grid *= sp[:, None, None, None]
    small = float(extent.min())

    # hidden anatomy: organ near the centre, vessel beside it, lesion inside it
    organ_c = extent / 2 + rng.uniform(-0.08, 0.08, 3) * extent
    organ_r = small * rng.uniform(0.30, 0.38, 3)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    vessel_r = small * rng.uniform(0.16, 0.22, 3)
    vessel_c = organ_c + direction * (organ_r + 0.6 * vessel_r)
    lesion_r = small * rng.uniform(0.09, 0.13, 3)
    lesion_c = organ_c + rng.uniform(-0.4, 0.4, 3) * organ_r

    sigma_vox = 3.0 / sp  # smoothness ~3 mm in every direction
    noises = [_smooth_noise(rng, shape, sigma_vox) for _ in range(3)]
    levels = np.stack(
        [
            _blob(grid, organ_c, organ_r, noises[0], 0.15),
            _blob(grid, vessel_c, vessel_r, noises[1], 0.2),
            _blob(grid, lesion_c, lesion_r, noises[2], 0.25),
        ]
    )
    truth = _compose(levels)

    # image: blurred intensities (partial volume) x bias field + noise
    clean = _INTENSITY[truth]
    clean += 0.08 * _smooth_noise(rng, shape, 1.0 / sp) * (truth > 0)  # texture
    clean = gaussian_filter(clean, 1.0 / sp)
    bias = 1.0 + 0.15 * _smooth_noise(rng, shape, 12.0 / sp)
    image = clean * bias + 0.30 * rng.standard_normal(shape).astype(np.float32)
    image = image.astype(np.float32)

    # raters: systematic per-class level offsets + smooth rater-specific boundary perturbation
    if rater_bias is None:
        rater_bias = rng.uniform(-0.12, 0.12, (n_raters, 3))
    rater_bias = np.asarray(rater_bias, dtype=np.float32)
    scale = np.array([1.0, 1.2, 1.4], dtype=np.float32)[
        :, None, None, None
    ]  # smaller → larger offset
    raters = np.stack(
        [
            _compose(
                levels
                + (
                    rater_bias[k][:, None, None, None]
                    + 0.05 * _smooth_noise(rng, shape, 4.0 / sp)[None]
                )
                * scale
            )
            for k in range(n_raters)
        ]
    )
    n_classes = len(CLASS_NAMES)
    counts = (raters[None] == np.arange(n_classes, dtype=np.uint8)[:, None, None, None, None]).sum(
        1
    )
    majority = counts.argmax(0).astype(np.uint8)
    return image, truth, raters, majority


def _affine(spacing: Sequence[float]) -> np.ndarray:
    aff = np.eye(4)
    aff[[0, 1, 2], [0, 1, 2]] = spacing
    return aff


def _save(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with storage.local_output(path) as tmp:
        nib.save(img, tmp)


def generate(
    out_dir: str,
    n_cases: int = 24,
    n_raters: int = 3,
    shape: Sequence[int] = (48, 48, 32),
    seed: int = 0,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> str:
    """Write a synthetic multi-rater dataset under ``out_dir``; return the path of dataset.json.

    ``n_cases`` cases of size ``shape`` (voxels) with ``spacing`` (mm) in the affine,
    ``n_raters`` rater labels each plus their majority vote as ``label``. The same ``seed``
    gives identical files. ``out_dir`` may be an ``s3://`` URL.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}.")
    if n_raters < 1:
        raise ValueError(f"n_raters must be >= 1, got {n_raters}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8 voxels, got {shape}.")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {spacing}.")

    root = str(out_dir)
    storage.makedirs(root)
    affine = _affine(spacing)
    rng = np.random.default_rng(seed)
    # systematic per-rater biases, fixed across cases (a rater who always over-segments …)
    rater_bias = rng.uniform(-0.1, 0.1, (n_raters, 3))
    case_seeds = rng.integers(0, 2**31 - 1, n_cases)
    training = []
    for i in range(n_cases):
        case_rng = np.random.default_rng(case_seeds[i])
        jitter = case_rng.uniform(-0.04, 0.04, rater_bias.shape)
        image, _, raters, majority = make_case(
            case_rng, shape, n_raters, spacing, rater_bias + jitter
        )
        case = f"synth_{i:03d}"
        img_rel = f"imagesTr/{case}.nii.gz"
        lab_rel = f"labelsTr/{case}.nii.gz"
        rat_rel = [f"labelsTr/{case}_rater{k + 1}.nii.gz" for k in range(n_raters)]
        _save(storage.join(root, img_rel), image, affine)
        _save(storage.join(root, lab_rel), majority, affine)
        for k in range(n_raters):
            _save(storage.join(root, rat_rel[k]), raters[k], affine)
        training.append(
            {
                "case": case,
                "image": "./" + img_rel,
                "label": "./" + lab_rel,
                "raters": ["./" + r for r in rat_rel],
            }
        )
    meta = {
        "name": "synthetic",
        "description": "calibseg synthetic multi-rater segmentation data "
        "(organ, vessel, lesion; majority-vote label)",
        "tensorImageSize": "3D",
        "reference": "calibseg.data.synthetic",
        "licence": "CC0",
        "modality": {"0": "synthetic"},
        "labels": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "spacing": list(spacing),
        "shape": list(shape),
        "seed": int(seed),
        "numRaters": int(n_raters),
        "numTraining": int(n_cases),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    path = storage.join(root, "dataset.json")
    storage.write_json(path, meta)
    return path
