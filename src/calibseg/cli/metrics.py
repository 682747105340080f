"""Multi-rater metrics: compute per-case tables and compare models with paired statistics."""

from __future__ import annotations

from enum import Enum

import typer

from calibseg.cli.common import console, print_table
from calibseg.metrics.choices import REGIONS

#: ``--region`` choices (typer lists them in --help and refuses others)
Region = Enum("Region", {r: r for r in REGIONS}, type=str)  # type: ignore[misc]

app = typer.Typer(no_args_is_help=True)

_SHOW = (
    "dice_consensus",
    "confidence",
    "crps_volume",
    "hd95",
    "ece",
    "ece_toplabel",
    "ncc_variance",
    "auroc_entropy",
    "aurc",
    "eaurc",
    "fleiss_kappa",
)


def _summary_path(out: str) -> str:
    return out[:-4] + "_summary.csv" if out.endswith(".csv") else out + "_summary.csv"


@app.command("compute")
def compute(
    pred: str = typer.Option(..., help="Prediction folder (<case>_prob.nii.gz or nnU-Net .npz)."),
    raters: str = typer.Option(..., help="CURVAS-layout root or dataset.json with rater labels."),
    out: str = typer.Option("metrics.csv", help="Tidy output table (CSV)."),
    model: str | None = typer.Option(None, help="Model name in the table (default: folder name)."),
    group: str = typer.Option("", help="Group label in the table (e.g. ensemble, member)."),
    region: Region = typer.Option("whole", help="Calibration region."),
    body_threshold: float = typer.Option(-500.0, help="Image threshold of the body crop."),
    dilation: int = typer.Option(3, help="Dilation iterations of the rater union (voxels)."),
    num_bins: int = typer.Option(20, help="Bins of the classwise ECE/ACE/MCE."),
    class_names: str | None = typer.Option(None, help="Comma-separated names, background first."),
    append: bool = typer.Option(
        False, help="Add to an existing table (replacing this model's rows of this region/bins)."
    ),
    scheduler: str | None = typer.Option(None, help="Dask scheduler address to fan cases out."),
    workers: int | None = typer.Option(None, help="Local Dask workers (default: in-process)."),
) -> None:
    """Per case, class and rater metrics → tidy CSV (case, model, group, class, rater, metric,
    value) and a wide summary <out>_summary.csv.

    Example: calibseg metrics compute --pred bundles/B/ensembles/global --raters data/synthetic/dataset.json --out metrics.csv --model ensemble
    """
    import io

    import pandas as pd

    from calibseg import storage
    from calibseg.evaluate.multirater_table import COLUMNS, compute_metrics_table, summarise

    names = [c.strip() for c in class_names.split(",")] if class_names else None
    df = compute_metrics_table(
        pred,
        raters,
        model=model,
        group=group,
        class_names=names,
        region=region.value,
        body_threshold=body_threshold,
        dilation=dilation,
        num_bins=num_bins,
        scheduler=scheduler,
        workers=workers,
    )
    model_name = df["model"].iloc[0]
    if append and storage.exists(out):
        old = pd.read_csv(io.BytesIO(storage.read_bytes(out)), dtype={"case": str, "rater": str})
        if list(old.columns) != COLUMNS:
            raise ValueError(
                f"{out} is not a calibseg metrics table (columns {list(old.columns)})."
            )
        old["group"] = old["group"].fillna("").astype(str)
        same = (old["model"] == model_name) & (old["group"] == group)
        same &= (old["region"] == region.value) & (old["num_bins"] == num_bins)
        old = old[~same]
        df = pd.concat([old, df], ignore_index=True)
    summary = summarise(df)
    storage.write_text(out, df.to_csv(index=False))
    storage.write_text(_summary_path(out), summary.to_csv(index=False))
    cur = summary[(summary["model"] == model_name) & summary["metric"].isin(_SHOW)]
    settings = ("model", "group", "region", "num_bins", "metric", "rater", "n_cases")
    classes = [c for c in cur.columns if c not in settings]
    rows = [
        [r["metric"], str(r["rater"]), *("" if pd.isna(r[c]) else f"{r[c]:.4f}" for c in classes)]
        for _, r in cur.iterrows()
        if r["rater"] in ("consensus", "all", "1")
    ]
    print_table(
        f"{model_name}: mean over cases",
        ["metric", "rater", *(str(c) for c in classes)],
        rows,
        right=[False, False, *([True] * len(classes))],
    )
    console.print(f"wrote {out} ({len(df)} rows) and {_summary_path(out)}")


@app.command("compare")
def compare(
    table: str = typer.Argument(..., help="Tidy metrics CSV from `calibseg metrics compute`."),
    a: str = typer.Option(..., help="Model A (comma-separated models are averaged per case)."),
    b: str = typer.Option(..., help="Model B (comma-separated models are averaged per case)."),
    metric: str = typer.Option("dice_consensus", help="Metric to compare."),
    n_boot: int = typer.Option(10000, help="Bootstrap resamples of the cases."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    out: str | None = typer.Option(None, help="Also write the comparison as CSV."),
) -> None:
    """Paired comparison over cases: mean difference B − A, bootstrap 95% CI (cases resampled)
    and the Wilcoxon signed-rank p-value, per class and rater.

    Example: calibseg metrics compare metrics.csv --a rater1_seed11,rater2_seed11 --b ensemble --metric dice_consensus
    """
    import io

    import pandas as pd

    from calibseg import storage
    from calibseg.metrics.statistics import compare_models

    df = pd.read_csv(io.BytesIO(storage.read_bytes(table)), dtype={"case": str, "rater": str})
    ma = [x.strip() for x in a.split(",") if x.strip()]
    mb = [x.strip() for x in b.split(",") if x.strip()]
    res = compare_models(df, ma, mb, metric, n_boot=n_boot, seed=seed)
    cols = [
        "class",
        "rater",
        "n_cases",
        "mean_a",
        "mean_b",
        "mean_diff",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    rows = [
        [str(r[c]) if c in ("class", "rater", "n_cases") else f"{r[c]:.4g}" for c in cols]
        for _, r in res.iterrows()
    ]
    print_table(
        f"{metric}: B ({b}) − A ({a}), paired over cases",
        cols,
        rows,
        right=[c not in ("class", "rater") for c in cols],
    )
    if out:
        storage.write_text(out, res.to_csv(index=False))
        console.print(f"wrote {out}")
