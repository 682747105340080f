"""Combine member predictions into an ensemble prediction with uncertainty maps.

For every case, members are read one at a time and folded into running sums
(:class:`calibseg.metrics.uncertainty.UncertaintyAccumulator`), so memory does not grow with
the number of members. Outputs per case (all written atomically, channel last):

``<case>_prob.nii.gz`` [x,y,z,C] · ``<case>_seg.nii.gz`` argmax · ``<case>_entropy.nii.gz``
(total, nats) · ``<case>_aleatoric.nii.gz`` · ``<case>_epistemic.nii.gz`` ·
``<case>_1mmaxp.nii.gz`` · ``<case>_variance.nii.gz`` [x,y,z,C];
and ``ensemble.json`` (members, method, weights, strategy, group, cases) once all cases are done.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch

from calibseg import storage
from calibseg.ensemble.io import list_cases, prediction_folder, read_probabilities, write_nifti
from calibseg.metrics.uncertainty import UncertaintyAccumulator

__all__ = ["OUTPUT_SUFFIXES", "combine_case", "combine_members", "match_cases", "normalise_weights"]

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (
    "_prob.nii.gz",
    "_seg.nii.gz",
    "_entropy.nii.gz",
    "_aleatoric.nii.gz",
    "_epistemic.nii.gz",
    "_1mmaxp.nii.gz",
    "_variance.nii.gz",
)


def normalise_weights(weights: Sequence[float] | None, n: int, method: str) -> list[float]:
    """Member weights summing to 1 (uniform unless ``method == "weighted"``)."""
    if method == "weighted":
        if weights is None:
            raise ValueError("method 'weighted' needs --weights (one per member).")
        if len(weights) != n:
            raise ValueError(f"got {len(weights)} weights for {n} members.")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}.")
        return (w / w.sum()).tolist()
    if weights is not None:
        raise ValueError(f"weights are only used with --method weighted (got method {method!r}).")
    return [1.0 / n] * n


def match_cases(members: Mapping[str, str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Case ids shared by all members and, per member, case → file. Members must agree."""
    files = {name: list_cases(prediction_folder(path)) for name, path in members.items()}
    names = list(files)
    ref = set(files[names[0]])
    for name in names[1:]:
        other = set(files[name])
        if other != ref:
            miss = sorted(ref - other)[:5]
            extra = sorted(other - ref)[:5]
            raise ValueError(
                f"members disagree on cases: {name!r} vs {names[0]!r} — missing {miss}, "
                f"extra {extra}; predict the same cases with every member."
            )
    return sorted(ref), files


def combine_case(
    case: str,
    member_files: Sequence[str],
    member_names: Sequence[str],
    weights: Sequence[float],
    out_dir: str,
    method: str = "mean",
) -> dict:
    """Combine one case of all members (read one at a time) and write its outputs.

    Returns ``{"case", "shape", "mean_entropy", "mean_epistemic"}``.
    """
    acc = UncertaintyAccumulator(method, dtype=torch.float32)  # outputs are float32 anyway
    affine = None
    shape = None
    for name, path, w in zip(member_names, member_files, weights, strict=True):
        prob, aff = read_probabilities(path)
        if shape is None:
            shape, affine = tuple(prob.shape), aff
        elif tuple(prob.shape) != shape:
            raise ValueError(
                f"case {case}: member {name!r} has shape {tuple(prob.shape)} (classes first), "
                f"expected {shape} like {member_names[0]!r}."
            )
        acc.add(prob, w)
        del prob
    comb = acc.combined()
    maps = acc.maps()
    out = lambda suffix: storage.join(out_dir, case + suffix)  # noqa: E731
    cl = lambda t: t.movedim(0, -1).numpy()  # noqa: E731  [C, *sp] → [*sp, C]
    c = comb.shape[0]
    write_nifti(out("_prob.nii.gz"), cl(comb), affine, np.float32)
    write_nifti(
        out("_seg.nii.gz"), comb.argmax(0).numpy(), affine, np.uint8 if c < 256 else np.int16
    )
    for key in ("entropy", "aleatoric", "epistemic", "1mmaxp"):
        write_nifti(out(f"_{key}.nii.gz"), maps[key].numpy(), affine, np.float32)
    write_nifti(out("_variance.nii.gz"), cl(maps["variance"]), affine, np.float32)
    return {
        "case": case,
        "shape": list(shape),
        "mean_entropy": float(maps["entropy"].mean()),
        "mean_epistemic": float(maps["epistemic"].mean()),
    }


def _combine_job(item, names, weights, out_dir, method) -> dict:
    case, paths = item
    with torch.no_grad():
        return combine_case(case, paths, names, weights, out_dir, method=method)


def combine_members(
    members: Mapping[str, str],
    out_dir: str,
    method: str = "mean",
    weights: Sequence[float] | None = None,
    strategy: str = "global",
    group: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> dict:
    """Ensemble the members ``{name: prediction folder}`` into ``out_dir``.

    ``method``: ``mean`` | ``logit-mean`` | ``weighted`` (with ``weights``, one per member,
    normalised to sum 1). ``strategy``/``group`` are recorded in ``ensemble.json``.
    Cases fan out through ``calibseg.distributed.map_cases`` (in-process by default; a Dask
    cluster with ``scheduler`` or ``workers``). Returns the ``ensemble.json`` content.
    """
    if not members:
        raise ValueError("no ensemble members given.")
    if method not in UncertaintyAccumulator.METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose one of {', '.join(UncertaintyAccumulator.METHODS)}."
        )
    names = list(members)
    w = normalise_weights(weights, len(names), method)
    cases, files = match_cases(members)
    storage.makedirs(out_dir)
    from calibseg.distributed import map_cases

    job = partial(_combine_job, names=names, weights=w, out_dir=out_dir, method=method)
    items = [(case, [files[n][case] for n in names]) for case in cases]
    results = map_cases(job, items, scheduler=scheduler, workers=workers, description="ensemble")
    meta = {
        "members": [{"name": n, "path": str(members[n])} for n in names],
        "method": method,
        "weights": w,
        "strategy": strategy,
        "group": group,
        "cases": cases,
        "uncertainty_units": "nats",
        "outputs": list(OUTPUT_SUFFIXES),
        "mean_entropy": float(np.mean([r["mean_entropy"] for r in results])),
        "mean_epistemic": float(np.mean([r["mean_epistemic"] for r in results])),
    }
    storage.write_json(storage.join(out_dir, "ensemble.json"), meta)
    log.info("ensembled %d members over %d cases into %s", len(names), len(cases), out_dir)
    return meta
