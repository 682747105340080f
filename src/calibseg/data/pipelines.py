"""MONAI preprocessing / augmentation pipelines for the registered datasets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calibseg.data.registry import DatasetSpec

__all__ = ["STAGES", "build_transforms", "rater_keys"]

STAGES = ("train", "val", "infer")


def rater_keys(n: int) -> list[str]:
    """Dictionary keys of ``n`` rater labels: ``["rater_1", …, "rater_n"]``."""
    return [f"rater_{k + 1}" for k in range(int(n))]


def _first(data):
    """Unwrap the single-sample list returned by MONAI's multi-sample crops."""
    return data[0] if isinstance(data, list) else data


def build_transforms(
    spec: DatasetSpec,
    stage: str,
    roi_size: Sequence[int] = (96, 96, 96),
    rater_keys: Sequence[str] = (),
    rater: int | str | None = None,
    spacing: Sequence[float] | None = None,
):
    """A ``monai.transforms.Compose`` for ``spec`` at ``stage`` ("train" | "val" | "infer").

    Keys: "image" (all stages), "label" and ``rater_keys`` (train/val; filled from the item's
    "raters" list when absent). Steps: remote (``s3://``) paths → local cached copies
    (:class:`calibseg.data.remote.CacheRemoted`) → LoadImaged (nibabel, channel first; BraTS stacks its
    four modality files as channels) → Orientationd RAS → Spacingd to ``spacing`` or the
    dataset spacing (bilinear image, nearest labels; skipped when None) → intensity
    (z-score over non-zero voxels / whole-image z-score / HU clip + scale to [0, 1]) → label
    mapping (BraTS 4 → 3). Train adds: pad to ``roi_size``, one ``roi_size`` crop (centred on
    foreground half of the time, except synthetic: uniform), flips along each axis (p 0.5),
    intensity scale/shift ±10 % (p 0.5), and the ``rater`` target (see
    :func:`calibseg.transforms.rater_label_transform`). Every stage returns one dict per item.
    """
    from monai.transforms import (
        Compose,
        LoadImaged,
        MapLabelValued,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    from calibseg.data.remote import CacheRemoted
    from calibseg.transforms import SplitRatersd, rater_label_transform

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be 3 positive sizes, got {tuple(roi_size)}.")
    rater_keys = list(rater_keys) if stage != "infer" else []
    if rater is not None and stage != "infer" and not rater_keys:
        raise ValueError(f"rater={rater!r} needs rater_keys (e.g. rater_keys(3)).")
    label_keys = [] if stage == "infer" else ["label", *rater_keys]
    keys = ["image", *label_keys]
    spacing = tuple(spacing) if spacing is not None else spec.spacing

    xforms: list = [CacheRemoted([*keys, "raters"] if rater_keys else keys)]
    if rater_keys:
        xforms.append(SplitRatersd(rater_keys))
    xforms += [
        LoadImaged(keys, reader="NibabelReader", ensure_channel_first=True, image_only=True),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if spacing is not None:
        xforms.append(
            Spacingd(keys, pixdim=spacing, mode=["bilinear"] + ["nearest"] * len(label_keys))
        )
    if spec.intensity == "zscore_nonzero":
        xforms.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    elif spec.intensity == "zscore":
        xforms.append(NormalizeIntensityd("image", channel_wise=True))
    elif spec.intensity == "ct":
        lo, hi = spec.hu_range
        xforms.append(
            ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        )
    else:
        raise ValueError(f"unknown intensity mode {spec.intensity!r} for {spec.name}.")
    if spec.label_map and label_keys:
        orig, target = zip(*sorted(spec.label_map.items()), strict=True)
        xforms.append(
            MapLabelValued(label_keys, orig_labels=list(orig), target_labels=list(target))
        )
    if stage == "train":
        xforms.append(SpatialPadd(keys, spatial_size=roi))
        if spec.name == "synthetic":
            xforms.append(RandSpatialCropd(keys, roi_size=roi, random_size=False))
        else:
            xforms += [
                RandCropByPosNegLabeld(
                    keys, label_key="label", spatial_size=roi, pos=1.0, neg=1.0, num_samples=1
                ),
                _first,
            ]
        xforms += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
        xforms += [
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    target = rater_label_transform(rater, rater_keys, spec.num_classes) if label_keys else None
    if target is not None:
        xforms.append(target)
    return Compose(xforms, map_items=False)
