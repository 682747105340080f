"""Bundle commands: create and list experiment bundles."""

from __future__ import annotations

import typer

from calibseg.cli.common import console, print_table

app = typer.Typer(no_args_is_help=True)


@app.command("create")
def create(
    data: str = typer.Option(
        ..., "--data", help="Dataset: acdc17, amos22, brats21, kits23, synthetic."
    ),
    loss: str = typer.Option(..., "--loss", help="Loss, e.g. baseline_dice_ce, hardl1ace_dice_ce."),
    out: str = typer.Option("bundles", "--out", help="Folder (or s3:// URL) holding the bundles."),
    data_root: str = typer.Option(
        None, "--data-root", help="Dataset root (default: $CALIBSEG_DATA_<NAME>)."
    ),
) -> None:
    """Create the bundle <data>_<loss>_<hash8> (an existing one is reused, never overwritten).

    Example: calibseg bundle create --data synthetic --loss softl1ace_dice_ce --data-root data/synth
    """
    from calibseg import storage
    from calibseg.bundles import bundle_name, bundle_status, create_bundle

    before = bundle_status(storage.join(out, bundle_name(data, loss, data_root)))
    path = storage.redact(create_bundle(data, loss, out=out, data_root=data_root))
    if before == "complete":
        console.print(
            f"bundle [bold]{path}[/] already exists; reusing it (nothing overwritten).",
            soft_wrap=True,
        )
    elif before == "incomplete":
        console.print(
            f"bundle [bold]{path}[/] was incomplete (interrupted creation); repaired it.",
            soft_wrap=True,
        )
    else:
        console.print(f"created bundle [bold]{path}[/]", soft_wrap=True)


@app.command("list")
def list_(
    root: str = typer.Option(
        "bundles", "--root", help="Folder (or s3:// URL) holding the bundles."
    ),
) -> None:
    """Show the bundles under a folder: data, loss, runs and best validation Dice.

    Example: calibseg bundle list --root bundles
    """
    from calibseg import storage
    from calibseg.bundles import list_bundles

    rows = list_bundles(root)
    if not rows:
        console.print(
            f"no bundles under {root}; create one with `calibseg bundle create`.", soft_wrap=True
        )
        return
    cells = [
        [
            r["name"],
            str(r["data"]),
            str(r["loss"]),
            ", ".join(r["runs"]) or "-",
            "-" if r["best_dice"] is None else f"{r['best_dice']:.3f}",
        ]
        for r in rows
    ]
    print_table(
        f"bundles in {storage.redact(root)}",
        ("name", "data", "loss", "runs", "best Dice"),
        cells,
        right=(False, False, False, False, True),
    )
