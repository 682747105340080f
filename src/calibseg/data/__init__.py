"""Datasets: registry of native-layout scanners and MONAI pipelines, splits, synthetic data.

>>> from calibseg.data import get_dataset, make_splits
>>> spec = get_dataset("acdc17")
>>> items = spec.scan(spec.resolve_root(None))          # root from $CALIBSEG_DATA_ACDC17
>>> splits = make_splits(items, split_seed=0)
>>> train_tf = spec.transforms("train", roi_size=(128, 128, 16))
"""

from calibseg.data.pipelines import build_transforms, rater_keys
from calibseg.data.registry import REGISTRY, DatasetSpec, get_dataset, list_datasets
from calibseg.data.scanners import MULTIRATER_CLASS_NAMES, scan_multirater
from calibseg.data.splits import make_splits
from calibseg.data.validate import Problem, check_items

__all__ = [
    "REGISTRY",
    "DatasetSpec",
    "MULTIRATER_CLASS_NAMES",
    "Problem",
    "build_transforms",
    "check_items",
    "get_dataset",
    "list_datasets",
    "make_splits",
    "rater_keys",
    "scan_multirater",
]
