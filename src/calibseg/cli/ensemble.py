"""Ensemble commands: train and predict multi-rater members, combine them with uncertainty maps."""

from __future__ import annotations

from enum import Enum

import typer

from calibseg.cli.common import console
from calibseg.metrics.choices import COMBINE_METHODS

#: ``--method`` choices: how member probabilities are combined
Method = Enum(  # type: ignore[misc]
    "Method", {m.replace("-", "_"): m for m in COMBINE_METHODS}, type=str
)


class Strategy(str, Enum):
    """``--strategy`` choices; a named group of chosen members is given with ``--group``."""

    global_ = "global"
    per_rater = "per-rater"


app = typer.Typer(no_args_is_help=True)


@app.command("train")
def train(
    bundle: str = typer.Argument(..., help="Bundle folder (from `calibseg bundle create`)."),
    raters: str = typer.Option("1,2,3", help="Rater numbers (1-based), 'mean' or 'random'."),
    seeds: str = typer.Option("11,22,33", help="Comma-separated seeds (0 is valid)."),
    max_epochs: int | None = typer.Option(None, help="Override the bundle's epoch count."),
    debug: bool = typer.Option(False, help="Tiny debug run (few iterations)."),
    scheduler: str | None = typer.Option(
        None, help="Dask scheduler address (tcp://host:8786) to fan the members out."
    ),
    workers: int | None = typer.Option(None, help="Train members on N local Dask workers."),
    gpus_per_member: float = typer.Option(0, help="GPUs each member asks of a Dask worker."),
    patience: int = typer.Option(
        5, help="Early stopping: validations without a Dice gain on the validation split (0: off)."
    ),
) -> None:
    """Train one member per (rater, seed), named rater<k>_seed<s> / mean_seed<s> / random_seed<s>.

    Example: calibseg ensemble train bundles/synthetic_baseline_ce_1a2b3c4d --raters 1,2,3 --seeds 11,22
    """
    from calibseg.ensemble.members import member_plan, parse_raters, parse_seeds, train_members

    r, s = parse_raters(raters), parse_seeds(seeds)
    plan = member_plan(r, s)
    console.print(f"training {len(plan)} members: {', '.join(n for n, _, _ in plan)}")
    runs = train_members(
        bundle,
        r,
        s,
        max_epochs=max_epochs,
        debug=debug,
        scheduler=scheduler,
        workers=workers,
        gpus_per_member=gpus_per_member,
        patience=patience,
        on_done=lambda n, d: console.print(f"[green]done[/] {n} → {d}"),
    )
    console.print(f"{len(runs)} members trained in {bundle}")


@app.command("predict")
def predict(
    bundle: str = typer.Argument(..., help="Bundle folder holding the member runs."),
    members: str | None = typer.Option(
        None, help="Comma-separated member names (default: every trained member run)."
    ),
    checkpoint: str = typer.Option("best", help="Checkpoint to use: best or last."),
    cases: str = typer.Option("test", help="Split to predict."),
) -> None:
    """Predict with each member (runner.predict) into <bundle>/<member>/predictions/.

    Example: calibseg ensemble predict bundles/synthetic_baseline_ce_1a2b3c4d --members rater1_seed11,rater2_seed11
    """
    from calibseg import storage
    from calibseg.ensemble.members import MEMBER_PATTERN, predict_members

    if members:
        names = [m.strip() for m in members.split(",") if m.strip()]
    else:
        if not storage.exists(bundle):
            raise FileNotFoundError(f"no such bundle: {bundle}")
        names = [n for n in storage.ls(bundle) if MEMBER_PATTERN.match(n)]
        if not names:
            raise FileNotFoundError(
                f"no member runs in {bundle}: run `calibseg ensemble train {bundle}` first."
            )
    out = predict_members(
        bundle,
        names,
        checkpoint=checkpoint,
        cases=cases,
        on_done=lambda n, d: console.print(f"[green]predicted[/] {n} → {d}"),
    )
    console.print(f"{len(out)} members predicted")


def _member_names(dirs: list[str]) -> dict[str, str]:
    import os

    out: dict[str, str] = {}
    for d in dirs:
        base = os.path.basename(d.rstrip("/"))
        if base == "predictions":
            base = os.path.basename(os.path.dirname(d.rstrip("/")))
        name, i = base, 2
        while name in out:
            name, i = f"{base}_{i}", i + 1
        out[name] = d
    return out


@app.command("combine")
def combine(
    more: list[str] | None = typer.Argument(None, help="More member folders (after --members)."),
    members: list[str] | None = typer.Option(
        None, help="Member prediction folders (calibseg or nnU-Net .npz); repeatable."
    ),
    bundle: str | None = typer.Option(None, help="Use the member runs of this bundle."),
    strategy: Strategy = typer.Option(
        Strategy.global_, help="All members in one ensemble, or one ensemble per rater."
    ),
    group: str | None = typer.Option(
        None, help="One named group of chosen members instead: NAME=member1,member2,…"
    ),
    out: str | None = typer.Option(None, help="Output folder (default <bundle>/ensembles)."),
    method: Method = typer.Option("mean", help="How member probabilities are combined."),
    weights: str | None = typer.Option(None, help="Comma-separated weights for --method weighted."),
    scheduler: str | None = typer.Option(None, help="Dask scheduler address to fan cases out."),
    workers: int | None = typer.Option(None, help="Local Dask workers (default: in-process)."),
) -> None:
    """Combine member predictions (streaming) and write uncertainty maps beside the ensemble.

    Outputs per case: _prob, _seg, _entropy, _aleatoric, _epistemic, _1mmaxp, _variance (.nii.gz,
    nats) and ensemble.json. per-rater writes one ensemble per rater into OUT/<group>/; global and
    named groups write into OUT.

    Example: calibseg ensemble combine --members runs/a/predictions runs/b/predictions --out ens

    Example: calibseg ensemble combine --bundle bundles/synthetic_baseline_ce_1a2b3c4d --strategy per-rater

    Example: calibseg ensemble combine --bundle B --group s1=rater1_seed11,rater2_seed11 --out s1
    """
    from calibseg import storage
    from calibseg.ensemble.combine import combine_members
    from calibseg.ensemble.members import discover_members, group_members

    if group is not None and strategy is not Strategy.global_:
        raise ValueError("--group replaces --strategy: give one of the two.")
    dirs = list(members or []) + list(more or [])
    flat = [p for d in dirs for p in d.split(",") if p]
    if bool(flat) == bool(bundle):
        raise ValueError("give either --members DIR … or --bundle BUNDLE (one of the two).")
    found = discover_members(bundle) if bundle else _member_names(flat)
    if out is None:
        if not bundle:
            raise ValueError("--out is required with --members.")
        out = storage.join(bundle, "ensembles")
    w = [float(x) for x in weights.split(",")] if weights else None
    spec = group if group is not None else strategy.value
    groups = group_members(list(found), spec)
    for gname, names in groups.items():
        dest = storage.join(out, gname) if strategy is Strategy.per_rater else out
        gw = None
        if w is not None:
            if len(w) != len(found):
                raise ValueError(f"got {len(w)} weights for {len(found)} members.")
            gw = [w[list(found).index(n)] for n in names]
        meta = combine_members(
            {n: found[n] for n in names},
            dest,
            method=method.value,
            weights=gw,
            strategy=spec,
            group=gname,
            scheduler=scheduler,
            workers=workers,
        )
        console.print(
            f"[green]{gname}[/]: {len(names)} members, {len(meta['cases'])} cases → {dest} "
            f"(mean entropy {meta['mean_entropy']:.4f} nats, "
            f"mean epistemic {meta['mean_epistemic']:.4f} nats)"
        )
