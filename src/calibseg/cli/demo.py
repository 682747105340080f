"""Demo command: a small calibration study on synthetic data, three losses compared."""

from __future__ import annotations

import typer

from calibseg.cli.common import console


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the top-level app."""

    @app.command("demo")
    def demo(
        out: str = typer.Option("demo_out", "--out", help="Output folder (data, bundles, runs)."),
        full: bool = typer.Option(
            False, "--full", help="3 seeds: mean ± std and paired tests against the baseline."
        ),
        epochs: int = typer.Option(None, "--epochs", help="Override the demo's epoch count."),
        cases: int = typer.Option(None, "--cases", help="Override the number of synthetic cases."),
    ) -> None:
        """Generate synthetic data, train baseline / hard-ACE / soft-ACE bundles on CPU, predict,
        evaluate on the test split with and without temperature scaling, and print Dice, HD95,
        ECE, ACE, MCE per loss (foreground classes; macro means over test cases) and an HTML
        report.

        Example: calibseg demo --out demo_out
        """
        from calibseg.cli.study import print_study_table
        from calibseg.evaluate.demo import DemoSettings, run_demo

        settings = DemoSettings(seeds=(0, 1, 2) if full else (0,))
        if epochs is not None:
            if epochs < 1:
                raise typer.BadParameter(f"--epochs must be >= 1, got {epochs}.")
            settings.max_epochs = epochs
        if cases is not None:
            settings.n_cases = cases
        console.print(
            f"demo: {settings.n_cases} synthetic cases {settings.shape}, whole-volume training, "
            f"{settings.max_epochs} epochs, seeds {list(settings.seeds)} → {out}"
        )
        res = run_demo(out, settings)
        print_study_table(res["frame"])
        for run in res["runs"]:
            for cal, path in run["figures"].items():
                console.print(
                    f"reliability diagram ({run['loss']}, seed {run['seed']}, {cal}): {path}",
                    soft_wrap=True,
                )
        console.print(f"report: {res['report']}", soft_wrap=True)
        console.print(f"done in {res['seconds']:.0f} s", soft_wrap=True)
