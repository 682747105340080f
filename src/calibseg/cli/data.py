"""Data commands: generate synthetic data, scan and validate a dataset's native layout."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


def _ints(text: str, name: str, n: int = 3) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"{name} must be {n} comma-separated integers, got {text!r}.") from None
    if len(vals) != n:
        raise ValueError(f"{name} must be {n} comma-separated integers, got {text!r}.")
    return vals


def _floats(text: str, name: str, n: int = 3) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be {n} comma-separated numbers, got {text!r}.") from None
    if len(vals) != n:
        raise ValueError(f"{name} must be {n} comma-separated numbers, got {text!r}.")
    return vals


@app.command()
def synth(
    out: str = typer.Option(..., "--out", "-o", help="Output folder (local path or s3:// URL)."),
    cases: int = typer.Option(24, "--cases", "-n", help="Number of cases."),
    raters: int = typer.Option(3, "--raters", "-k", help="Rater labels per case."),
    shape: str = typer.Option("48,48,32", "--shape", help="Volume size in voxels, X,Y,Z."),
    spacing: str = typer.Option("1,1,2", "--spacing", help="Voxel size in mm, X,Y,Z."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed → identical files)."),
) -> None:
    """Generate a synthetic multi-rater dataset (Decathlon layout with dataset.json).

    Example: calibseg data synth --out data/synthetic --cases 24 --raters 3 --seed 0
    """
    import time

    from calibseg.cli.common import console
    from calibseg.data.synthetic import generate

    shp = _ints(shape, "--shape")
    sp = _floats(spacing, "--spacing")
    t0 = time.perf_counter()
    with console.status(f"generating {cases} synthetic cases …"):
        path = generate(out, n_cases=cases, n_raters=raters, shape=shp, seed=seed, spacing=sp)
    console.print(
        f"[green]wrote[/] {cases} cases × {raters} raters, shape {shp}, spacing {sp} mm "
        f"in {time.perf_counter() - t0:.1f} s → {path}",
        highlight=False,
    )


@app.command()
def prepare(
    name: str = typer.Argument(..., help="Dataset: acdc17, amos22, brats21, kits23, synthetic."),
    data_root: str = typer.Option(
        None, "--data-root", help="Dataset root folder (default: $CALIBSEG_DATA_<NAME>)."
    ),
    out: str = typer.Option("datalist.json", "--out", "-o", help="Datalist JSON to write."),
    deep: bool = typer.Option(
        False, "--deep", help="Decode every voxel (finds truncated files; slower)."
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the train/val/test split."),
    max_ct_id: int = typer.Option(500, "--max-ct-id", help="amos22: keep CT ids below this."),
) -> None:
    """Scan a dataset's native layout, validate it and write a datalist JSON.

    The datalist holds the dataset name, root, class names, all items (absolute paths) and a
    deterministic split (case ids). Problems (missing labels, shape mismatches, corrupt
    files) are listed in a table and nothing is written (exit code 1).

    Example: calibseg data prepare acdc17 --data-root /data/ACDC --out acdc17.json
    """
    from rich.progress import Progress

    from calibseg import storage
    from calibseg.cli.common import console, print_table
    from calibseg.data import check_items, get_dataset, make_splits

    spec = get_dataset(name)
    root = spec.resolve_root(data_root)
    options = {"max_ct_id": max_ct_id} if spec.name == "amos22" else {}
    items = spec.scan(root, **options)
    problems = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"checking {len(items)} cases", total=len(items))
        for it in items:
            problems += check_items([it], in_channels=spec.in_channels, deep=deep)
            progress.advance(task)
    if problems:
        print_table(
            f"{spec.name}: {len(problems)} problem(s) under {root}",
            ("case", "problem", "file"),
            [[p.case, p.problem, p.path] for p in problems],
            right=(False, False, False),
        )
        console.print(f"[bold red]error:[/] {len(problems)} problem(s); fix them and rerun.")
        raise typer.Exit(1)
    splits = make_splits(items, split_seed=split_seed)
    datalist = {
        "dataset": spec.name,
        "data_root": root,
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        "num_cases": len(items),
        "split_seed": split_seed,
        "splits": {k: [it["case"] for it in v] for k, v in splits.items()},
        "items": items,
    }
    storage.write_json(out, datalist)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    console.print(
        f"[green]{spec.name}[/]: {len(items)} cases OK ({sizes}) → {out}", highlight=False
    )
