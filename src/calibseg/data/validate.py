"""Checks of scanned data items: missing files, unreadable headers, shape mismatches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from calibseg import storage

__all__ = ["Problem", "check_items", "read_shape"]


class Problem(NamedTuple):
    """One problem with one file of one case."""

    case: str
    path: str
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.case}: {self.problem} ({self.path})"
            if self.path
            else f"{self.case}: {self.problem}"
        )


def read_shape(path: str, deep: bool = False) -> tuple[int, ...]:
    """Shape of a NIfTI file from its header (``deep``: also decode every voxel).

    Raises FileNotFoundError for a missing file and ValueError for an unreadable one.
    """
    import nibabel as nib

    with storage.local_path(path) as local:
        try:
            img = nib.load(local)
            shape = tuple(int(s) for s in img.shape)
            if deep:
                img.dataobj[...]  # noqa: B018 - decode all voxels to find truncated files
        except FileNotFoundError:
            raise
        except Exception as e:  # nibabel/gzip/zlib raise many types for corrupt data
            raise ValueError(f"unreadable or corrupt NIfTI: {type(e).__name__}: {e}") from None
    return shape


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial part of a NIfTI shape (3D, or 4D with one channel/time point)."""
    return shape[:3]


def check_items(
    items: Sequence[dict],
    in_channels: int | None = None,
    deep: bool = False,
) -> list[Problem]:
    """All problems with ``items`` (empty list = fine).

    Per case: every image / label / rater file exists and its header reads; image channels
    (files, or the 4th axis of a single file) match ``in_channels``; label and rater spatial
    shapes equal the image's. Headers only, unless ``deep``.
    """
    problems: list[Problem] = []
    seen: set[str] = set()
    for it in items:
        case = str(it.get("case", "?"))
        if case in seen:
            problems.append(Problem(case, "", "duplicate case id"))
        seen.add(case)

        def shape_of(path: str | None, role: str) -> tuple[int, ...] | None:
            if not path:
                problems.append(Problem(case, "", f"missing {role}"))  # noqa: B023
                return None
            try:
                s = read_shape(path, deep)
            except FileNotFoundError:
                problems.append(Problem(case, str(path), f"missing {role} file"))  # noqa: B023
                return None
            except ValueError as e:
                problems.append(Problem(case, str(path), f"{role}: {e}"))  # noqa: B023
                return None
            return s

        images = it.get("image")
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        image_shapes = [shape_of(p, "image") for p in image_list]
        ref = next((s for s in image_shapes if s is not None), None)
        for p, s in zip(image_list, image_shapes, strict=True):
            if s is not None and _spatial(s) != _spatial(ref):
                problems.append(Problem(case, str(p), f"image shape {s} differs from {ref}"))
        if in_channels is not None and ref is not None:
            channels = len(image_list) if len(image_list) > 1 else (ref[3] if len(ref) > 3 else 1)
            if channels != in_channels:
                problems.append(
                    Problem(
                        case,
                        str(image_list[0]),
                        f"{channels} image channels, expected {in_channels}",
                    )
                )
        targets = []
        if "label" in it:
            targets.append((it.get("label"), "label"))
        if "raters" in it:
            raters = it.get("raters") or []
            if not raters:
                problems.append(Problem(case, "", "no rater annotations"))
            targets += [(p, f"rater {k + 1} label") for k, p in enumerate(raters)]
        for p, role in targets:
            s = shape_of(p, role)
            if s is not None and ref is not None and _spatial(s) != _spatial(ref):
                problems.append(
                    Problem(case, str(p), f"{role} shape {s} does not match image shape {ref}")
                )
    return problems
