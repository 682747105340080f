"""Ensemble members: naming, training and prediction through the bundle runner, discovery and
grouping.

A member is one training run of a bundle, named ``rater<k>_seed<s>`` (trained on rater k's
labels), ``mean_seed<s>`` (soft label = rater average) or ``random_seed<s>`` (a random rater
per iteration). Its predictions live in ``<bundle>/<member>/predictions/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from calibseg import distributed, storage

__all__ = [
    "MEMBER_PATTERN",
    "member_name",
    "parse_raters",
    "parse_seeds",
    "member_plan",
    "train_members",
    "predict_members",
    "discover_members",
    "group_members",
]

log = logging.getLogger(__name__)

MEMBER_PATTERN = re.compile(r"^(?P<group>rater\d+|mean|random)_seed(?P<seed>\d+)$")


def member_name(rater: int | str, seed: int) -> str:
    """``rater<k>_seed<s>`` for an int rater, ``mean_seed<s>`` / ``random_seed<s>`` otherwise."""
    if isinstance(rater, int):
        return f"rater{rater}_seed{seed}"
    return f"{rater}_seed{seed}"


def parse_raters(text: str) -> list[int | str]:
    """``"1,2,3"`` → [1, 2, 3]; ``"mean"``/``"random"`` kept as words (may be mixed)."""
    out: list[int | str] = []
    for tok in (t.strip() for t in str(text).split(",")):
        if not tok:
            continue
        if tok in ("mean", "random"):
            out.append(tok)
        elif tok.isdigit() and int(tok) >= 1:
            out.append(int(tok))
        else:
            raise ValueError(
                f"invalid rater {tok!r}: use 1-based rater numbers (e.g. 1,2,3), 'mean' or 'random'."
            )
    if not out:
        raise ValueError("no rater given (e.g. --raters 1,2,3).")
    return list(dict.fromkeys(out))


def parse_seeds(text: str) -> list[int]:
    """``"11,22,33"`` → [11, 22, 33] (non-negative integers; 0 is valid)."""
    toks = [t.strip() for t in str(text).split(",") if t.strip()]
    if not toks or not all(t.isdigit() for t in toks):
        raise ValueError(f"seeds must be non-negative integers separated by commas, got {text!r}.")
    return list(dict.fromkeys(int(t) for t in toks))


def member_plan(
    raters: Sequence[int | str], seeds: Sequence[int]
) -> list[tuple[str, int | str, int]]:
    """``[(name, rater, seed)]`` for every rater × seed, rater-major."""
    return [(member_name(r, s), r, s) for r in raters for s in seeds]


def train_members(
    bundle: str,
    raters: Sequence[int | str],
    seeds: Sequence[int],
    max_epochs: int | None = None,
    debug: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus_per_member: float = 0,
    on_done: Callable[[str, str], None] | None = None,
    patience: int | None = None,
) -> dict[str, str]:
    """Train one member per (rater, seed) with ``calibseg.bundles.runner.train``; returns
    ``{member: run dir}``. ``patience`` sets early stopping on the bundle's validation
    split (validations without a Dice gain; None keeps the bundle's setting). With
    ``scheduler`` (or ``workers``) the runs are Dask tasks
    (:func:`calibseg.distributed.run_training_jobs`), each asking for ``gpus_per_member`` GPUs."""
    from calibseg.bundles import runner

    plan = member_plan(raters, seeds)
    kwargs = [
        {
            "bundle": bundle,
            "seed": s,
            "max_epochs": max_epochs,
            "debug": debug,
            "run_name": name,
            "rater": r,
            "patience": patience,
        }
        for name, r, s in plan
    ]
    res = {"GPU": float(gpus_per_member)} if gpus_per_member else {}
    return distributed.run_training_jobs(
        [(name, runner.train, kw) for (name, _, _), kw in zip(plan, kwargs, strict=True)],
        scheduler=scheduler,
        workers=workers,
        resources=res,
        on_done=on_done,
    )


def predict_members(
    bundle: str,
    members: Sequence[str],
    checkpoint: str = "best",
    cases: str = "test",
    on_done: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Predict with each member via ``calibseg.bundles.runner.predict``; ``{member: pred dir}``."""
    from calibseg.bundles import runner

    out: dict[str, str] = {}
    for name in members:
        m = MEMBER_PATTERN.match(name)
        if m is None:
            raise ValueError(
                f"invalid member name {name!r}: expected rater<k>_seed<s>, mean_seed<s> or "
                "random_seed<s>."
            )
        out[name] = str(
            runner.predict(
                bundle, seed=int(m["seed"]), checkpoint=checkpoint, run_name=name, cases=cases
            )
        )
        if on_done:
            on_done(name, out[name])
    return out


def discover_members(bundle: str) -> dict[str, str]:
    """``{member: predictions folder}`` for the member runs of a bundle that have predictions."""
    if not storage.exists(bundle):
        raise FileNotFoundError(f"no such bundle: {bundle}")
    found = {}
    for name in storage.ls(bundle):
        if MEMBER_PATTERN.match(name):
            pred = storage.join(bundle, name, "predictions")
            if storage.exists(pred) and storage.ls(pred):
                found[name] = pred
    if not found:
        raise FileNotFoundError(
            f"no member predictions in {bundle}: run `calibseg ensemble train` and "
            "`calibseg ensemble predict` first."
        )
    return found


def group_members(names: Sequence[str], strategy: str) -> dict[str, list[str]]:
    """Groups of members to ensemble.

    ``global`` → all members; ``per-rater`` → the seeds of each rater (groups ``rater1`` …,
    ``mean``, ``random``); ``NAME=m1,m2,…`` → one named group of the listed members.
    """
    names = list(names)
    if strategy == "global":
        return {"global": names}
    if strategy == "per-rater":
        groups: dict[str, list[str]] = {}
        bad = []
        for n in names:
            m = MEMBER_PATTERN.match(n)
            if m is None:
                bad.append(n)
            else:
                groups.setdefault(m["group"], []).append(n)
        if bad:
            raise ValueError(
                f"per-rater needs member names like rater1_seed11; cannot group {', '.join(bad)}."
            )
        return groups
    if "=" in strategy:
        gname, _, listed = strategy.partition("=")
        chosen = [t.strip() for t in listed.split(",") if t.strip()]
        gname = gname.strip()
        if not gname or not chosen:
            raise ValueError(f"a named group is NAME=member1,member2,…; got {strategy!r}.")
        missing = [c for c in chosen if c not in names]
        if missing:
            raise ValueError(
                f"group {gname!r} names unknown members {', '.join(missing)}; "
                f"available: {', '.join(names)}."
            )
        return {gname: chosen}
    raise ValueError(
        f"unknown strategy {strategy!r}: use per-rater, global or NAME=member1,member2,…"
    )
