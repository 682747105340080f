"""Saving and loading per-case bin statistics (``bin_stats.npz``), locally or on ``s3://``."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

import numpy as np
import torch

from calibseg import storage
from calibseg.binning import BinStats

__all__ = ["save_bin_stats", "load_bin_stats", "BINSTATS_FORMAT"]

BINSTATS_FORMAT = 1
_KEYS = ("format", "weight", "sum_p", "sum_gt", "case_ids", "class_names")


def save_bin_stats(
    path: str | os.PathLike,
    stats: BinStats,
    case_ids: Sequence[str],
    class_names: Sequence[str],
) -> None:
    """Write per-case statistics ``[N, C, K]`` with their case ids and class names.

    A compressed ``.npz`` written atomically (the file appears complete or not at all).
    Raises ``ValueError`` if ``case_ids`` / ``class_names`` do not match ``N`` / ``C``.
    """
    if not isinstance(stats, BinStats):
        raise TypeError(f"stats must be a BinStats, got {type(stats).__name__}.")
    n, c, _ = stats.shape
    case_ids, class_names = [str(x) for x in case_ids], [str(x) for x in class_names]
    if len(case_ids) != n:
        raise ValueError(f"{len(case_ids)} case_ids given for BinStats of {n} cases.")
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class_names given for BinStats of {c} classes.")
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        format=np.int64(BINSTATS_FORMAT),
        weight=stats.weight.detach().cpu().numpy(),
        sum_p=stats.sum_p.detach().cpu().to(torch.float64).numpy(),
        sum_gt=stats.sum_gt.detach().cpu().to(torch.float64).numpy(),
        case_ids=np.array(case_ids, dtype=np.str_).reshape(n),
        class_names=np.array(class_names, dtype=np.str_).reshape(c),
    )
    storage.write_bytes(path, buf.getvalue())


def load_bin_stats(path: str | os.PathLike) -> tuple[BinStats, list[str], list[str]]:
    """Read a file written by :func:`save_bin_stats`: ``(stats [N, C, K], case_ids, class_names)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a corrupt one.
    """
    data = storage.read_bytes(path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            arrays = {k: z[k] for k in _KEYS}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"corrupt bin statistics file {path}: {e}") from None
    if int(arrays["format"]) != BINSTATS_FORMAT:
        raise ValueError(
            f"{path} has bin statistics format {int(arrays['format'])}; "
            f"this version reads format {BINSTATS_FORMAT}."
        )
    w, sp, sg = (torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in _KEYS[1:4])
    case_ids = [str(x) for x in arrays["case_ids"].tolist()]
    class_names = [str(x) for x in arrays["class_names"].tolist()]
    if w.ndim != 3 or sp.shape != w.shape or sg.shape != w.shape:
        raise ValueError(f"corrupt bin statistics file {path}: inconsistent array shapes.")
    if len(case_ids) != w.shape[0] or len(class_names) != w.shape[1]:
        raise ValueError(f"corrupt bin statistics file {path}: names do not match the arrays.")
    return BinStats(w, sp.to(torch.float64), sg.to(torch.float64)), case_ids, class_names
