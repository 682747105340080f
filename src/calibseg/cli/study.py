"""Study command: losses × seeds trained, evaluated and temperature-scaled; CSV + HTML report."""

from __future__ import annotations

import json

import typer

from calibseg.bundles import LOSSES as BUNDLE_LOSSES
from calibseg.cli.common import CalibsegError, console, print_table
from calibseg.nnunet import study_losses as nnunet_losses
from calibseg.nnunet.options import TrainOptions

_LOSSES_HELP = (
    "Comma-separated losses; the first is the baseline of the paired tests. Bundle losses: "
    + ", ".join(BUNDLE_LOSSES)
    + "."
    + (
        f" nnU-Net losses ({', '.join(nnunet_losses())}) train through nnU-Net's own pipeline "
        "on the same splits (folders under OUT/nnunet)."
        if nnunet_losses()
        else ""
    )
)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{name} must be comma-separated integers, got {text!r}."
        ) from None
    if not values:
        raise typer.BadParameter(f"{name} is empty.")
    return values


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "#" not in key:
            raise typer.BadParameter(f"--set takes '<config>#<key>=<value>', got {item!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def print_study_table(frame, title: str = "test split, foreground classes") -> None:
    """Print the study's summary (mean ± std over seeds) with Holm-adjusted Wilcoxon p-values
    of ACE against each row's reference (the baseline; nnU-Net rows: nnunet_dicece when the
    study has it); numbers are never truncated or wrapped."""
    import numpy as np

    from calibseg.evaluate.study_report import paired_tests, summary_table

    table = summary_table(frame)
    multi = int(table["seeds"].max()) > 1
    tests = paired_tests(frame) if multi and len(table) > 1 else None
    cols = [("Dice", "dice"), ("HD95", "hd95"), ("ECE", "ece"), ("ACE", "ace"), ("MCE", "mce")]
    cols.append(("micro ACE", "micro_ace"))
    headers = ["loss", "post-hoc", *(name for name, _ in cols)]
    if tests is not None:
        headers.append("ACE Δ vs reference, Holm p")
    rows = []
    for (loss, cal), row in table.iterrows():
        cells = []
        for _, m in cols:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            if not np.isfinite(mean):
                cells.append("-")
            else:
                cells.append(f"{mean:.3f} ± {std:.3f}" if multi else f"{mean:.3f}")
        if tests is not None:
            t = tests[
                (tests["loss"] == loss) & (tests["calibration"] == cal) & (tests["metric"] == "ace")
            ]
            cells.append(
                "-"
                if t.empty
                else f"{t['mean_diff'].iloc[0]:+.3f} vs {t['reference'].iloc[0]}, "
                f"p={t['p_holm'].iloc[0]:.3g}"
            )
        rows.append([loss, "temperature" if cal == "temperature" else "-", *cells])
    right = [False, False, *([True] * (len(headers) - 2))]
    print_table(title + (", mean ± std over seeds" if multi else ""), headers, rows, right=right)


def register(app: typer.Typer) -> None:
    """Add ``study`` to the top-level app."""

    @app.command("study")
    def study(
        out: str = typer.Option("study_out", "--out", help="Study folder (bundles, runs, report)."),
        data: str = typer.Option("synthetic", "--data", help="Dataset name."),
        data_root: str = typer.Option(
            None,
            "--data-root",
            help="Dataset folder; synthetic without it: generated under <out>/data.",
        ),
        losses: str = typer.Option(
            "baseline_dice_ce,hardl1ace_dice_ce,softl1ace_dice_ce",
            "--losses",
            help=_LOSSES_HELP,
        ),
        seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated run seeds."),
        epochs: int = typer.Option(
            None, "--epochs", help="Maximum epochs of every run (default: bundle's / nnU-Net's)."
        ),
        nnunet_iterations: int = typer.Option(
            None, "--nnunet-iterations", help="nnU-Net losses: training iterations per epoch."
        ),
        nnunet_val_iterations: int = typer.Option(
            None,
            "--nnunet-val-iterations",
            help="nnU-Net losses: validation iterations per epoch.",
        ),
        patience: int = typer.Option(
            10,
            "--patience",
            help="Early stopping: validations without a Dice gain (nnU-Net: epochs without an "
            "EMA pseudo-Dice gain; 0: off).",
        ),
        temperature: str = typer.Option(
            "scalar", "--temperature", help="Post-hoc temperature: scalar, per_class or none."
        ),
        cases: int = typer.Option(24, "--cases", help="Synthetic cases to generate."),
        set_: list[str] = typer.Option(
            None, "--set", help="Bundle override '<config>#<key>=<json value>' (repeatable)."
        ),
        workers: int = typer.Option(
            None, "--workers", help="Run the (loss, seed) runs on a local Dask cluster of N."
        ),
        scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address."),
    ) -> None:
        """Run a calibration study end to end; rerunning continues where it stopped.

        Every (loss, seed) is trained with early stopping on the validation split, predicted,
        evaluated on the test split, and evaluated again after temperature scaling fitted on its
        validation predictions. Writes study.csv (tidy), summary.csv, tests.csv and report.html.

        nnU-Net losses (extra calibseg[nnunet]) train through nnU-Net's own pipeline on the same
        cases and splits; their nnU-Net folders live under OUT/nnunet.

        Example: calibseg study --out study_out --seeds 0,1,2 --epochs 200 --workers 2
        """
        from rich.markup import escape

        from calibseg import storage
        from calibseg.evaluate.study import StudySettings, run_study

        overrides = _overrides(set_)
        if epochs is not None:
            if epochs < 1:
                raise typer.BadParameter(f"--epochs must be >= 1, got {epochs}.")
            overrides["train#max_epochs"] = epochs
        generated = data == "synthetic" and data_root is None
        settings = StudySettings(
            data=data,
            data_root=storage.join(out, "data") if generated else data_root,
            losses=tuple(v.strip() for v in losses.split(",") if v.strip()),
            seeds=_ints(seeds, "--seeds"),
            overrides=overrides,
            patience=patience,
            temperature=temperature,
            nnunet_options=TrainOptions(
                epochs=epochs,
                iterations_per_epoch=nnunet_iterations,
                val_iterations_per_epoch=nnunet_val_iterations,
            ),
        )
        try:
            settings.check()
        except ValueError as e:  # the install hint's [nnunet] is text, not markup
            raise CalibsegError(escape(str(e))) from None
        if generated and not storage.exists(storage.join(settings.data_root, "dataset.json")):
            from calibseg.data.synthetic import generate

            generate(settings.data_root, n_cases=cases, seed=0)
        res = run_study(out, settings, scheduler=scheduler, workers=workers)
        print_study_table(res["frame"])
        console.print(f"report: {res['report']}", soft_wrap=True)
        console.print(f"done in {res['seconds']:.0f} s", soft_wrap=True)
