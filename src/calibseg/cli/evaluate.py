"""Evaluate commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("evaluate")(evaluate_cmd)


def _eval_defaults(bundle: str) -> dict:
    """The bundle's configs/inference_eval.yaml as a dict ({} when the bundle has none)."""
    import yaml

    from calibseg import storage

    path = storage.join(bundle, "configs", "inference_eval.yaml")
    if not storage.exists(path):
        return {}
    cfg = yaml.safe_load(storage.read_text(path)) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{storage.redact(path)} is not a mapping of settings.")
    return cfg


def evaluate_cmd(
    bundle: str = typer.Argument(..., help="Bundle folder or s3:// URL."),
    seed: int | None = typer.Option(None, "--seed", help="Evaluate run seed_<S> (default 0)."),
    run: str | None = typer.Option(None, "--run", help="Run folder name, e.g. rater1_seed11."),
    regions: bool | None = typer.Option(
        None,
        "--regions/--classes",
        help="KiTS/BraTS hierarchical regions or classes (default: the bundle's eval_regions).",
    ),
    num_bins: int | None = typer.Option(
        None, "--bins", help="Number of calibration bins (default: the bundle's eval_num_bins)."
    ),
    case_figures: bool | None = typer.Option(
        None,
        "--case-figures/--no-case-figures",
        help="One diagram per case (default: the bundle's eval_case_figures).",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Start a local Dask cluster with N worker processes."
    ),
    out: str | None = typer.Option(None, "--out", help="Output folder (default <run>/evaluation)."),
    data_root: str | None = typer.Option(
        None,
        "--data-root",
        help="Dataset root (default: $CALIBSEG_DATA_<NAME>, else the bundle's recorded root).",
    ),
) -> None:
    """Evaluate a run's test predictions: Dice, HD95, ECE/ACE/MCE (macro and micro) per class.

    Regions, bins and case figures come from the bundle's configs/inference_eval.yaml
    (eval_regions, eval_num_bins, eval_case_figures); the options override them.
    Results go to <bundle>/<run>/evaluation/ (or evaluation_2/, … if that already has results).

    Example: calibseg evaluate bundles/synthetic_hardl1ace_dice_1a2b3c4d --seed 0 --workers 2
    """
    from calibseg.cli.common import CalibsegError, console, print_table
    from calibseg.evaluate import evaluate_run

    if seed is not None and run is not None:
        raise CalibsegError("give either --seed or --run, not both.")
    run_name = run if run is not None else f"seed_{0 if seed is None else seed}"
    defaults = _eval_defaults(bundle)
    regions = bool(defaults.get("eval_regions", False)) if regions is None else regions
    num_bins = int(defaults.get("eval_num_bins", 20)) if num_bins is None else num_bins
    if case_figures is None:
        case_figures = bool(defaults.get("eval_case_figures", False))
    summary = evaluate_run(
        bundle,
        run_name=run_name,
        regions=regions,
        num_bins=num_bins,
        case_figures=case_figures,
        scheduler=scheduler,
        workers=workers,
        out_dir=out,
        data_root=data_root,
    )

    def fmt(v, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    rows = []
    for name, s in summary["classes"].items():
        d, h = s["dice"], s["hd95"]
        rows.append(
            [
                name,
                f"{fmt(d['mean'])}±{fmt(d['std'])}",
                f"{fmt(h['mean'], 1)}±{fmt(h['std'], 1)}",
                *(fmt(s["macro"][k]) for k in ("ece", "ace", "mce")),
                *(fmt(s["micro"][k]) for k in ("ece", "ace", "mce")),
            ]
        )
    print_table(
        f"{run_name}: {summary['num_cases']} test cases, {num_bins} bins",
        ("class", "Dice", "HD95", "ECE", "ACE", "MCE", "ECE µ", "ACE µ", "MCE µ"),
        rows,
    )
    console.print(
        "ECE/ACE/MCE: macro = mean over cases; µ = micro (pooled bins). "
        f"Results: {summary['output_dir']}",
        highlight=False,
    )
