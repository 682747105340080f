"""MONAI dictionary transforms: hierarchical region channels and rater label handling.

Region transforms turn class labels or softmax probabilities into overlapping region
channels, smallest region first:

- KiTS23 (labels 0 background, 1 kidney, 2 tumour, 3 cyst) →
  ``[background, tumour, tumour+cyst (masses), kidney+tumour+cyst]``;
- BraTS (labels 0 background, 1 necrotic core, 2 oedema, 3 enhancing tumour; a raw label 4
  is read as 3) → ``[background, ET, TC = 1+3, WT = 1+2+3]``.

Labels (``[1, *spatial]`` class indices or ``[C, *spatial]`` one-hot) give 0/1 channels and
the background channel is ``1 − union of all foreground`` (= ``label == 0``). Softmax
probabilities ``[C, *spatial]`` give summed probabilities and the background channel is the
background probability (equal to ``1 − union`` when the probabilities sum to one).

Rater transforms combine several rater label maps (each ``[1, *spatial]`` indices or
``[C, *spatial]`` one-hot) into one target under ``output_key``: their average
(:class:`AverageAnnotationsd`), a random convex combination (:class:`RandomWeightedAverageAnnotationsd`),
one fixed rater (:class:`SelectRaterd`) or one random rater per call (:class:`RandomRaterd`).
:func:`rater_label_transform` picks the right one for a training option.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.networks.utils import one_hot
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type, convert_to_tensor

from calibseg.losses._inputs import check_class_indices

__all__ = [
    "KITS23_REGIONS",
    "BRATS_REGIONS",
    "KITS23_REGION_NAMES",
    "BRATS_REGION_NAMES",
    "labels_to_regions",
    "probabilities_to_regions",
    "ConvertToKits23Classesd",
    "ConvertToKits23ClassesSoftmaxd",
    "ConvertToBratsClassesd",
    "ConvertToBratsClassesSoftmaxd",
    "AverageAnnotationsd",
    "RandomWeightedAverageAnnotationsd",
    "SelectRaterd",
    "RandomRaterd",
    "SplitRatersd",
    "rater_label_transform",
]

# region membership matrices [regions, classes]; row r sums the classes that make region r
KITS23_REGIONS = np.array(
    [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]],
    dtype=np.float32,
)
BRATS_REGIONS = np.array(
    [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]],
    dtype=np.float32,
)
KITS23_REGION_NAMES = ["background", "tumour", "masses", "kidney_and_masses"]
BRATS_REGION_NAMES = ["background", "ET", "TC", "WT"]


def _one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[1, *spatial]`` class indices (or ``[C, *spatial]`` one-hot/soft) → ``[C, *spatial]`` float
    (``monai.networks.utils.one_hot``).

    Raises:
        ValueError: other channel counts; indices outside ``[0, num_classes)`` or not whole.
    """
    if label.ndim < 2:
        raise ValueError(
            f"expected a channel-first label [1 or C, *spatial], got shape {tuple(label.shape)}."
        )
    if label.shape[0] == num_classes and num_classes > 1:
        return label.float()
    if label.shape[0] != 1:
        raise ValueError(
            f"label has {label.shape[0]} channels; expected 1 (class indices) or {num_classes} (one-hot)."
        )
    check_class_indices(label, num_classes, "label")
    return one_hot(label, num_classes, dtype=torch.float32, dim=0)


def _apply_regions(x: torch.Tensor, regions: np.ndarray) -> torch.Tensor:
    """Sum class channels ``[C, *spatial]`` into region channels ``[R, *spatial]``."""
    g = torch.as_tensor(regions, dtype=x.dtype, device=x.device)
    return torch.tensordot(g, x, dims=([1], [0]))


def labels_to_regions(
    label: NdarrayOrTensor, regions: np.ndarray = KITS23_REGIONS, raw_brats: bool = False
) -> NdarrayOrTensor:
    """Class labels ``[1, *spatial]`` (or one-hot ``[C, *spatial]``) → 0/1 regions ``[R, *spatial]``.

    ``regions`` is a ``[R, C]`` 0/1 membership matrix; row 0 should be the background class
    alone. With ``raw_brats`` a label value 4 is read as 3. Same type as the input (numpy,
    torch or MetaTensor).
    """
    t = convert_to_tensor(label, track_meta=False)
    if raw_brats:
        t = torch.where(t == 4, torch.as_tensor(3, dtype=t.dtype, device=t.device), t)
    out = _apply_regions(_one_hot(t, regions.shape[1]), regions)
    return convert_to_dst_type(out, dst=label, dtype=out.dtype)[0]


def probabilities_to_regions(
    prob: NdarrayOrTensor, regions: np.ndarray = KITS23_REGIONS
) -> NdarrayOrTensor:
    """Class probabilities ``[C, *spatial]`` → summed region probabilities ``[R, *spatial]``."""
    t = convert_to_tensor(prob, track_meta=False)
    if t.ndim < 2 or t.shape[0] != regions.shape[1]:
        raise ValueError(
            f"expected probabilities with {regions.shape[1]} channels [C, *spatial], "
            f"got shape {tuple(t.shape)}."
        )
    out = _apply_regions(t.float(), regions)
    return convert_to_dst_type(out, dst=prob, dtype=out.dtype)[0]


class _Regionsd(MapTransform):
    regions: np.ndarray = KITS23_REGIONS
    softmax: bool = False
    raw_brats: bool = False

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            # a list/tuple is the output of a deep-supervision network: one map per head
            d[key] = (
                [self._convert(v) for v in x] if isinstance(x, (list, tuple)) else self._convert(x)
            )
        return d

    def _convert(self, x: NdarrayOrTensor) -> NdarrayOrTensor:
        if self.softmax:
            return probabilities_to_regions(x, self.regions)
        return labels_to_regions(x, self.regions, self.raw_brats)


class ConvertToKits23Classesd(_Regionsd):
    """KiTS23 labels (0 bg, 1 kidney, 2 tumour, 3 cyst; ``[1, *spatial]`` or one-hot ``[4, …]``)
    → 0/1 regions ``[4, *spatial]``: background (= 1 − union), tumour, tumour+cyst,
    kidney+tumour+cyst."""

    regions = KITS23_REGIONS


class ConvertToKits23ClassesSoftmaxd(_Regionsd):
    """KiTS23 softmax ``[4, *spatial]`` → summed region probabilities ``[4, *spatial]``:
    p(background), p(tumour), p(tumour)+p(cyst), p(kidney)+p(tumour)+p(cyst). A list of such
    maps (deep-supervision heads) gives a list, each converted."""

    regions = KITS23_REGIONS
    softmax = True


class ConvertToBratsClassesd(_Regionsd):
    """BraTS labels (0 bg, 1 NCR, 2 ED, 3 ET — a raw 4 is read as 3; ``[1, *spatial]`` or one-hot
    ``[4, …]``) → 0/1 regions ``[4, *spatial]``: background (= 1 − WT), ET, TC, WT."""

    regions = BRATS_REGIONS
    raw_brats = True


class ConvertToBratsClassesSoftmaxd(_Regionsd):
    """BraTS softmax ``[4, *spatial]`` (bg, NCR, ED, ET) → summed region probabilities
    ``[4, *spatial]``: p(bg), p(ET), p(NCR)+p(ET), p(NCR)+p(ED)+p(ET)."""

    regions = BRATS_REGIONS
    softmax = True


def _stack_annotations(
    d: Mapping, keys: Sequence[Hashable], num_classes: int | None
) -> torch.Tensor:
    """Rater annotations under ``keys`` → one-hot/soft ``[K, C, *spatial]``."""
    if not keys:
        raise ValueError("no rater keys given.")
    first = d[keys[0]]
    t0 = convert_to_tensor(first, track_meta=False)
    if num_classes is None:
        if t0.shape[0] == 1:
            masks = [convert_to_tensor(d[k], track_meta=False).float() for k in keys]
            shapes = {tuple(m.shape) for m in masks}
            if len(shapes) != 1:
                raise ValueError(
                    f"rater labels {list(keys)} have different shapes: {sorted(shapes)}."
                )
            stacked = torch.stack(masks)
            if bool(((stacked != 0) & (stacked != 1)).any()):
                raise ValueError(
                    "rater labels [1, ...] with values other than 0/1 are class indices: give "
                    "num_classes to average them as one-hot labels."
                )
            return stacked  # binary masks: the mean is the fraction of raters, [1, *spatial]
        num_classes = int(t0.shape[0])
    hots = [_one_hot(convert_to_tensor(d[k], track_meta=False), num_classes) for k in keys]
    shapes = {tuple(h.shape) for h in hots}
    if len(shapes) != 1:
        raise ValueError(f"rater labels {list(keys)} have different shapes: {sorted(shapes)}.")
    return torch.stack(hots)


class AverageAnnotationsd(MapTransform):
    """Mean of the rater labels under ``keys`` → soft label ``[C, *spatial]`` under ``output_key``.

    Each rater label is ``[1, *spatial]`` class indices (with ``num_classes``: averaged as
    one-hot, the output sums to one over channels), a ``[1, *spatial]`` binary mask (without
    ``num_classes``: the output ``[1, *spatial]`` is the fraction of raters marking each voxel,
    as in the paper's code) or ``[C, *spatial]`` one-hot/soft. The output is float32; the rater
    keys are kept.

    Raises:
        ValueError: index labels with values other than 0/1 and no ``num_classes``; raters of
            different shapes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "label",
        allow_missing_keys: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        out = _stack_annotations(d, keys, self.num_classes).mean(0)
        d[self.output_key] = convert_to_dst_type(out, dst=d[keys[0]], dtype=torch.float32)[0]
        return d


class RandomWeightedAverageAnnotationsd(Randomizable, MapTransform):
    """Random convex combination of the rater labels → soft label under ``output_key``.

    Weights ~ Dirichlet(``alpha``·1) are drawn anew on every call from the transform's
    random state (seed it with ``set_random_state`` or ``monai.utils.set_determinism``).
    ``alpha`` = 1 is uniform over the simplex; large ``alpha`` approaches the plain mean.
    Labels as in :class:`AverageAnnotationsd`. ``prob`` is the paper's argument; as there the
    combination is applied on every call (a ``prob`` other than 1 is ignored with a warning).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "label",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
        num_classes: int | None = None,
        alpha: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        if float(prob) != 1.0:
            warnings.warn(
                f"prob={prob} is ignored: the combination is applied on every call.", stacklevel=2
            )
        self.output_key = output_key
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.weights: np.ndarray | None = None

    def randomize(self, data: int) -> None:
        self.weights = self.R.dirichlet(np.full(data, self.alpha))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        hots = _stack_annotations(d, keys, self.num_classes)
        self.randomize(len(keys))
        w = torch.as_tensor(self.weights, dtype=hots.dtype, device=hots.device)
        out = torch.tensordot(w, hots, dims=([0], [0]))
        d[self.output_key] = convert_to_dst_type(out, dst=d[keys[0]], dtype=torch.float32)[0]
        return d


class SelectRaterd(MapTransform):
    """Copy the label of one rater (``keys`` = that rater's key) to ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key: str = "label") -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"SelectRaterd takes exactly one rater key, got {list(self.keys)}.")
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        d[self.output_key] = d[self.keys[0]]
        return d


class RandomRaterd(Randomizable, MapTransform):
    """Copy the label of one rater drawn uniformly at random on every call to ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key: str = "label") -> None:
        MapTransform.__init__(self, keys)
        self.output_key = output_key
        self.index = 0

    def randomize(self, data: int) -> None:
        self.index = int(self.R.randint(data))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        self.randomize(len(keys))
        d[self.output_key] = d[keys[self.index]]
        return d


class SplitRatersd(MapTransform):
    """Copy the paths in ``d[source]`` (a list, e.g. an item's ``"raters"``) to ``keys`` in order."""

    def __init__(self, keys: Sequence[str], source: str = "raters") -> None:
        super().__init__(keys)
        self.source = source

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if all(k in d for k in self.keys):
            return d
        paths = d.get(self.source)
        if not isinstance(paths, (list, tuple)) or len(paths) < len(self.keys):
            raise ValueError(
                f"case {d.get('case', '?')}: {len(self.keys)} rater labels requested but the item "
                f"has {len(paths) if isinstance(paths, (list, tuple)) else 0} under {self.source!r}."
            )
        d.update(zip(self.keys, paths, strict=False))
        return d


def rater_label_transform(
    rater: int | str | None,
    rater_keys: Sequence[str],
    num_classes: int,
    output_key: str = "label",
) -> MapTransform | None:
    """The transform that sets the training target from the rater labels, or None.

    ``rater``: None → keep ``output_key`` (the majority-vote label) and return None;
    int k → the k-th rater's label (1-based, class indices); ``"mean"`` → average of all
    raters, soft ``[C, *spatial]`` (train with ``to_onehot_y=False``); ``"random"`` → one
    rater drawn per call; ``"weighted"`` → random Dirichlet-weighted average (soft).
    Apply it after spatial transforms so all rater keys are cropped alike.
    """
    if rater is None:
        return None
    keys = list(rater_keys)
    if not keys:
        raise ValueError(f"rater={rater!r} needs rater labels, but the data has none.")
    if isinstance(rater, bool):
        raise TypeError(
            f"rater must be None, an int, 'mean', 'random' or 'weighted'; got {rater!r}."
        )
    if isinstance(rater, (int, np.integer)) or (isinstance(rater, str) and rater.isdigit()):
        k = int(rater)
        if not 1 <= k <= len(keys):
            raise ValueError(f"rater must be in 1..{len(keys)} (1-based), got {k}.")
        return SelectRaterd(keys[k - 1], output_key)
    if rater == "mean":
        return AverageAnnotationsd(keys, output_key, num_classes=num_classes)
    if rater == "random":
        return RandomRaterd(keys, output_key)
    if rater == "weighted":
        return RandomWeightedAverageAnnotationsd(keys, output_key, num_classes=num_classes)
    raise ValueError(
        f"rater must be None, an int 1..{len(keys)}, 'mean', 'random' or 'weighted'; got {rater!r}."
    )
