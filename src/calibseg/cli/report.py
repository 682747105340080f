"""Report commands: reliability figures and calibration tables from saved bin statistics."""

from __future__ import annotations

from enum import Enum

import typer


class FigureFormat(str, Enum):
    png = "png"
    pdf = "pdf"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("report")(report)


def report(
    eval_dir: str = typer.Argument(
        ..., help="Evaluation folder or URL holding bin_stats.npz (e.g. <run>/evaluation)."
    ),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Folder or URL for the figures (default: EVAL_DIR/figures)."
    ),
    fmt: FigureFormat = typer.Option(FigureFormat.png, "--format", "-f", help="Figure format."),
    cases: bool = typer.Option(False, "--cases", help="Also draw one diagram per case."),
    background: bool = typer.Option(
        True, "--background/--no-background", help="Include the first class (background)."
    ),
    average: bool = typer.Option(
        False, "--average/--no-average", help="Add an 'average over classes' panel."
    ),
) -> None:
    """Draw reliability figures and print macro/micro ECE, ACE and MCE per class.

    Reads EVAL_DIR/bin_stats.npz (written by `calibseg evaluate`) and writes
    dataset_reliability_diagram.<format> (and <case>_reliability_diagram.<format> with --cases).

    Example: calibseg report bundles/synthetic_hardl1ace_dice_ce_1a2b3c4d/seed_0/evaluation --cases
    """
    from calibseg import storage
    from calibseg.cli.common import console, print_table
    from calibseg.metrics import ERROR_NAMES, load_bin_stats, macro_micro_errors
    from calibseg.visualize import (
        draw_case_reliability_diagrams,
        draw_dataset_reliability_diagrams,
    )

    path = storage.join(eval_dir, "bin_stats.npz")
    if not storage.exists(path):
        raise FileNotFoundError(
            f"no bin_stats.npz in {eval_dir}: run `calibseg evaluate` first or pass the "
            "run's evaluation folder."
        )
    stats, case_ids, class_names = load_bin_stats(path)
    if not background:
        if stats.shape[1] < 2:
            raise ValueError("--no-background needs at least two classes.")
        stats, class_names = stats.select_classes(slice(1, None)), class_names[1:]
    out_dir = out or storage.join(eval_dir, "figures")
    written = draw_dataset_reliability_diagrams(
        stats, out_dir, class_names=class_names, fmt=fmt.value, average_over_classes=average
    )
    if cases:
        written += draw_case_reliability_diagrams(
            stats,
            out_dir,
            case_names=case_ids,
            class_names=class_names,
            fmt=fmt.value,
            average_over_classes=average,
        )

    res = macro_micro_errors(stats)
    missing = (stats.sum_gt.sum(-1) <= 0).sum(0).tolist()
    rows = [
        [
            name,
            *(_fmt(float(res[a][k][j])) for k in ERROR_NAMES for a in ("macro", "micro")),
            str(missing[j]),
        ]
        for j, name in enumerate(class_names)
    ]
    print_table(
        f"Calibration over {stats.shape[0]} cases ({stats.num_bins} bins)",
        [
            "class",
            *(f"{k.upper()} {a}" for k in ERROR_NAMES for a in ("macro", "micro")),
            "missing",
        ],
        rows,
    )
    console.print(
        "[dim]macro: mean over cases of per-case errors; micro: errors of the bins pooled over "
        "all cases; missing: cases without that class in the ground truth.[/]"
    )
    console.print(f"wrote {len(written)} figure(s) to {out_dir}")


def _fmt(x: float) -> str:
    return "–" if x != x else f"{x:.4f}"
