"""Dataset registry: what each dataset is, where it lives, how to read and preprocess it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from calibseg import storage
from calibseg.data import scanners

__all__ = ["DatasetSpec", "get_dataset", "list_datasets", "REGISTRY"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: classes, channels, native layout scanner and preprocessing.

    ``intensity``: ``"zscore_nonzero"`` (MRI: z-score over non-zero voxels, per channel),
    ``"zscore"`` (whole image) or ``"ct"`` (HU clipped to ``hu_range`` then scaled to [0, 1]).
    ``spacing``: target voxel size in mm (None = keep the native grid). ``label_map``: raw label
    value → class index applied on load (e.g. BraTS 4 → 3). ``regions``: ``"kits23"`` or
    ``"brats21"`` for hierarchical region evaluation.
    """

    name: str
    class_names: tuple[str, ...]
    in_channels: int
    scanner: Callable[..., list[dict]]
    layout: str
    intensity: str = "zscore_nonzero"
    spacing: tuple[float, float, float] | None = None
    hu_range: tuple[float, float] | None = None
    label_map: dict[int, int] | None = None
    regions: str | None = None
    channel_names: tuple[str, ...] = ("image",)
    scan_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw_label_map(self) -> dict[int, int]:
        """Class index → raw label value, the inverse of ``label_map`` (BraTS 2021: ``{3: 4}``);
        ``{}`` when the dataset's raw labels are its class indices.

        Raises ValueError when ``label_map`` cannot be inverted: two raw values on one class, or a
        class index left as it is that is also a raw value moved to another class.
        """
        moved = {r: c for r, c in (self.label_map or {}).items() if r != c}
        inverse: dict[int, int] = {}
        for raw, cls in sorted(moved.items()):
            if cls in inverse:
                raise ValueError(
                    f"{self.name}: label_map {self.label_map} sends raw labels {inverse[cls]} and "
                    f"{raw} to class {cls}; raw labels cannot be recovered."
                )
            inverse[cls] = raw
        for cls in range(self.num_classes):
            if cls not in inverse and cls in moved:
                raise ValueError(
                    f"{self.name}: class {cls} is also the raw label moved to class {moved[cls]} "
                    f"by label_map {self.label_map}; raw labels cannot be recovered."
                )
        return inverse

    @property
    def env_var(self) -> str:
        """Environment variable naming the data root: ``CALIBSEG_DATA_<NAME>``."""
        return f"CALIBSEG_DATA_{self.name.upper()}"

    @property
    def region_names(self) -> list[str] | None:
        """Names of the region channels produced by :meth:`region_transform`, or None."""
        from calibseg import transforms as T

        return {"kits23": T.KITS23_REGION_NAMES, "brats21": T.BRATS_REGION_NAMES}.get(
            self.regions or ""
        )

    def resolve_root(self, data_root: str | None = None) -> str:
        """The data root: ``data_root`` if given, else ``$CALIBSEG_DATA_<NAME>``.

        Raises ValueError when neither is set, FileNotFoundError when the folder is missing.
        """
        source = "--data-root"
        root = data_root
        if not root:
            root = os.environ.get(self.env_var) or None
            source = self.env_var
        if not root:
            raise ValueError(
                f"no data root for {self.name!r}: pass --data-root DIR or set {self.env_var} "
                f"(expected layout: {self.layout})."
            )
        root = os.path.expanduser(str(root))
        if not storage.isdir(root):
            raise FileNotFoundError(
                f"data root for {self.name!r} from {source} does not exist: {root}"
            )
        return root if storage.is_remote(root) else os.path.abspath(root)

    def scan(self, root: str, **options: Any) -> list[dict]:
        """Items found in the native layout under ``root`` (sorted by case id).

        ``options`` override :attr:`scan_options` (e.g. ``max_ct_id`` for amos22).
        """
        items = self.scanner(root, **{**self.scan_options, **options})
        return sorted(items, key=lambda it: it["case"])

    def validate(self, items: Sequence[dict], deep: bool = False) -> list[str]:
        """Problems with ``items`` as one line each (empty list = all good).

        Checks missing files, unreadable/corrupt headers, image/label/rater shape mismatches
        and the number of image channels; ``deep`` also reads every voxel (finds truncation).
        """
        from calibseg.data.validate import check_items

        return [str(p) for p in check_items(items, in_channels=self.in_channels, deep=deep)]

    def transforms(
        self,
        stage: str,
        roi_size: Sequence[int] = (96, 96, 96),
        rater_keys: Sequence[str] = (),
        rater: int | str | None = None,
        spacing: Sequence[float] | None = None,
    ):
        """MONAI ``Compose`` of dictionary transforms for ``stage`` "train" | "val" | "infer".

        See :func:`calibseg.data.pipelines.build_transforms`.
        """
        from calibseg.data.pipelines import build_transforms

        return build_transforms(self, stage, roi_size, rater_keys, rater, spacing)

    def region_transform(self, softmax: bool, keys: str | Sequence[str] | None = None):
        """Region-channel transform (KiTS23/BraTS) or None for datasets without regions.

        ``softmax`` True → the probability version on ``keys`` (default "pred"); False → the
        label version (default "label").
        """
        from calibseg import transforms as T

        if self.regions is None:
            return None
        keys = keys or ("pred" if softmax else "label")
        cls = {
            ("kits23", False): T.ConvertToKits23Classesd,
            ("kits23", True): T.ConvertToKits23ClassesSoftmaxd,
            ("brats21", False): T.ConvertToBratsClassesd,
            ("brats21", True): T.ConvertToBratsClassesSoftmaxd,
        }[(self.regions, bool(softmax))]
        return cls(keys=keys)


AMOS_CLASS_NAMES = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gall bladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "postcava",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
    "duodenum",
    "bladder",
    "prostate/uterus",
)

REGISTRY: dict[str, DatasetSpec] = {
    "acdc17": DatasetSpec(
        name="acdc17",
        class_names=("background", "right ventricle", "myocardium", "left ventricle"),
        in_channels=1,
        scanner=scanners.scan_acdc17,
        layout="training|testing/patientNNN/patientNNN_frameFF.nii.gz (+ _gt)",
        intensity="zscore_nonzero",
        spacing=(1.0, 1.0, 5.0),
        description="ACDC 2017 cardiac cine MRI, ED and ES frames",
    ),
    "amos22": DatasetSpec(
        name="amos22",
        class_names=AMOS_CLASS_NAMES,
        in_channels=1,
        scanner=scanners.scan_amos22,
        layout="imagesTr|labelsTr|imagesVa|labelsVa/amos_NNNN.nii.gz",
        intensity="ct",
        spacing=(1.5, 1.5, 2.0),
        hu_range=(-100.0, 200.0),
        scan_options={"max_ct_id": 500},
        description="AMOS 2022 abdominal CT, 15 organs",
    ),
    "brats21": DatasetSpec(
        name="brats21",
        class_names=(
            "background",
            "necrotic tumour core",
            "peritumoral oedema",
            "enhancing tumour",
        ),
        in_channels=4,
        scanner=scanners.scan_brats21,
        layout="BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz",
        intensity="zscore_nonzero",
        spacing=None,
        label_map={4: 3},
        regions="brats21",
        channel_names=scanners.BRATS_MODALITIES,
        description="BraTS 2021 glioma MRI (t1, t1ce, t2, flair), labels 4 → 3",
    ),
    "kits23": DatasetSpec(
        name="kits23",
        class_names=("background", "kidney", "tumour", "cyst"),
        in_channels=1,
        scanner=scanners.scan_kits23,
        layout="dataset/case_NNNNN/{imaging,segmentation}.nii.gz",
        intensity="ct",
        spacing=(1.5, 1.5, 1.5),
        hu_range=(-54.0, 242.0),
        regions="kits23",
        description="KiTS 2023 kidney CT",
    ),
    "curvas": DatasetSpec(
        name="curvas",
        class_names=tuple(scanners.MULTIRATER_CLASS_NAMES),
        in_channels=1,
        scanner=scanners.scan_multirater,
        layout="<case>/image.nii.gz + annotation_1..K.nii.gz (CURVAS style)",
        intensity="ct",
        spacing=None,
        hu_range=(-100.0, 200.0),
        description="CURVAS-style multi-rater abdominal CT (K rater annotations, no reference)",
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        class_names=("background", "organ", "vessel", "lesion"),
        in_channels=1,
        scanner=scanners.scan_decathlon,
        layout="dataset.json + imagesTr/ + labelsTr/ (from `calibseg data synth`)",
        intensity="zscore",
        spacing=None,
        description="generated multi-rater blobs (calibseg data synth)",
    ),
}


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; ValueError listing the valid names otherwise."""
    try:
        return REGISTRY[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}."
        ) from None
