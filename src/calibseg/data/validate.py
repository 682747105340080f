"""Checks of scanned data items: missing files, unreadable headers, shape mismatches."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from calibseg import storage

__all__ = ["Problem", "check_items", "check_complete", "read_shape"]


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


def _expected_bytes(img) -> int:
    """Bytes a NIfTI file holds when complete: data offset + voxels × item size (the offset
    read from the file is on the array proxy; a loaded header's ``vox_offset`` is reset)."""
    hdr = img.header
    n = int(np.prod(hdr.get_data_shape(), dtype=np.int64))
    offset = getattr(img.dataobj, "offset", None)
    offset = int(hdr.get_data_offset()) if offset is None else int(offset)
    return offset + n * int(hdr.get_data_dtype().itemsize)


def _decompressed_size(local: str) -> int:
    """Bytes a gzip file decompresses to (streamed); raises EOFError/OSError when cut short."""
    total = 0
    with gzip.open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def check_complete(local: str, img) -> None:
    """Raise ``ValueError`` if the local NIfTI file ``local`` is shorter than its header says.

    Cheap: ``.nii`` compares the file size; ``.nii.gz`` compares the gzip trailer's ISIZE
    (uncompressed size mod 2**32) with the expected byte count and decompresses (streaming,
    nothing kept) only when they differ — a cut-short download has random bytes there, a
    multi-member gzip a partial size, so only the suspect files cost a full read.
    """
    magic = np.asarray(img.header.get("magic", b"")).item()
    if magic not in (b"n+1", b"n+2"):
        return  # not a single-file NIfTI (e.g. an .hdr/.img pair): no length to check
    expected = _expected_bytes(img)
    size = os.path.getsize(local)
    with open(local, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        if not gz:
            if size < expected:
                raise ValueError(f"truncated NIfTI: {size} bytes, the header needs {expected}")
            return
        if size < 18:  # 10-byte gzip header + 8-byte trailer
            raise ValueError(f"truncated NIfTI: a {size}-byte gzip file")
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    if isize == expected % (1 << 32):
        return
    try:
        total = _decompressed_size(local)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"truncated or corrupt NIfTI (gzip stream ends early: {e}); the header needs "
            f"{expected} bytes"
        ) from None
    if total < expected:
        raise ValueError(
            f"truncated NIfTI: {total} bytes decompressed, the header needs {expected}"
        )


def read_shape(path: str, deep: bool = False) -> tuple[int, ...]:
    """Shape of a NIfTI file from its header, after checking that the file is as long as the
    header says (:func:`check_complete`; ``deep``: also decode every voxel).

    Raises FileNotFoundError for a missing file and ValueError for an unreadable, corrupt or
    truncated one.
    """
    import nibabel as nib

    with storage.local_path(path) as local:
        try:
            img = nib.load(local)
            shape = tuple(int(s) for s in img.shape)
        except FileNotFoundError:
            raise
        except Exception as e:  # nibabel/gzip/zlib raise many types for corrupt data
            raise ValueError(f"unreadable or corrupt NIfTI: {type(e).__name__}: {e}") from None
        check_complete(local, img)
        if deep:
            try:
                img.dataobj[...]  # noqa: B018 - decode all voxels to find corrupt data
            except Exception as e:
                raise ValueError(f"corrupt NIfTI data: {type(e).__name__}: {e}") from None
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
