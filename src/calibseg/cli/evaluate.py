"""Evaluate commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("evaluate")(evaluate_cmd)


def evaluate_cmd(
    bundle: str = typer.Argument(..., help="Bundle folder or s3:// URL."),
    seed: int | None = typer.Option(None, "--seed", help="Evaluate run seed_<S> (default 0)."),
    run: str | None = typer.Option(None, "--run", help="Run folder name, e.g. rater1_seed11."),
    regions: bool = typer.Option(False, "--regions", help="KiTS/BraTS hierarchical regions."),
    num_bins: int = typer.Option(20, "--bins", help="Number of calibration bins."),
    case_figures: bool = typer.Option(False, "--case-figures", help="One diagram per case."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Start a local Dask cluster with N worker processes."
    ),
    out: str | None = typer.Option(None, "--out", help="Output folder (default <run>/evaluation)."),
) -> None:
    """Evaluate a run's test predictions: Dice, HD95, ECE/ACE/MCE (macro and micro) per class.

    Results go to <bundle>/<run>/evaluation/ (or evaluation_2/, … if that already has results).

    Example: calibseg evaluate bundles/synthetic_hardl1ace_dice_1a2b3c4d --seed 0 --workers 2
    """
    from rich.table import Table

    from calibseg.cli.common import CalibsegError, console
    from calibseg.evaluate import evaluate_run

    if seed is not None and run is not None:
        raise CalibsegError("give either --seed or --run, not both.")
    run_name = run if run is not None else f"seed_{0 if seed is None else seed}"
    summary = evaluate_run(
        bundle,
        run_name=run_name,
        regions=regions,
        num_bins=num_bins,
        case_figures=case_figures,
        scheduler=scheduler,
        workers=workers,
        out_dir=out,
    )

    def fmt(v, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    table = Table(title=f"{run_name}: {summary['num_cases']} test cases, {num_bins} bins")
    for col in ("class", "Dice", "HD95", "ECE", "ACE", "MCE", "ECE µ", "ACE µ", "MCE µ"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for name, s in summary["classes"].items():
        d, h = s["dice"], s["hd95"]
        table.add_row(
            name,
            f"{fmt(d['mean'])}±{fmt(d['std'])}",
            f"{fmt(h['mean'], 1)}±{fmt(h['std'], 1)}",
            *(fmt(s["macro"][k]) for k in ("ece", "ace", "mce")),
            *(fmt(s["micro"][k]) for k in ("ece", "ace", "mce")),
        )
    console.print(table)
    console.print(
        "ECE/ACE/MCE: macro = mean over cases; µ = micro (pooled bins). "
        f"Results: {summary['output_dir']}",
        highlight=False,
    )
