"""Demo command: the whole pipeline on synthetic data, three losses compared."""

from __future__ import annotations

import typer

from calibseg.cli.common import console, print_table


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the top-level app."""

    @app.command("demo")
    def demo(
        out: str = typer.Option("demo_out", "--out", help="Output folder (data, bundles, runs)."),
        full: bool = typer.Option(False, "--full", help="3 seeds: mean ± std and Wilcoxon tests."),
        epochs: int = typer.Option(None, "--epochs", help="Override the demo's epoch count."),
        cases: int = typer.Option(None, "--cases", help="Override the number of synthetic cases."),
    ) -> None:
        """Generate synthetic data, train baseline / hard-ACE / soft-ACE bundles briefly on CPU,
        predict, evaluate and print Dice, ECE, ACE and MCE per loss (foreground macro means).

        Example: calibseg demo --out demo_out
        """
        from calibseg.bundles.demo import DemoSettings, run_demo

        settings = DemoSettings(seeds=(0, 1, 2) if full else (0,))
        if epochs is not None:
            settings.max_epochs = epochs
        if cases is not None:
            settings.n_cases = cases
        console.print(
            f"demo: {settings.n_cases} synthetic cases {settings.shape}, "
            f"{settings.max_epochs} epochs, seeds {list(settings.seeds)} → {out}"
        )
        res = run_demo(out, settings)
        multi = len(settings.seeds) > 1
        headers = ["loss", "Dice", "ECE", "ACE", "MCE"]
        if multi:
            headers.append("Wilcoxon p, ACE vs baseline")
        rows = []
        for loss, row in res["table"].items():
            cells = [
                f"{mean:.3f} ± {std:.3f}" if multi else f"{mean:.3f}"
                for mean, std in (row[m] for m in ("dice", "ece", "ace", "mce"))
            ]
            if multi:
                p = res["tests"].get(loss)
                cells.append("-" if p is None else f"{p:.3g}")
            rows.append([loss, *cells])
        print_table(
            "test split, foreground classes, macro (mean over cases)"
            + (", mean ± std over seeds" if multi else ""),
            headers,
            rows,
        )
        for loss, paths in res["figures"].items():
            for p in paths:
                console.print(f"reliability diagram ({loss}): {p}", soft_wrap=True)
        console.print(f"done in {res['seconds']:.0f} s", soft_wrap=True)
