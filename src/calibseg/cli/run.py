"""Run commands: train and predict with a bundle."""

from __future__ import annotations

import os

import typer

from calibseg.cli.common import console


def _rater(value: str | None):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``predict`` to the top-level app."""

    @app.command("train")
    def train(
        bundle: str = typer.Argument(
            ..., help="Bundle folder or s3:// URL (from `calibseg bundle create`)."
        ),
        seed: int = typer.Option(0, "--seed", help="Run seed (run folder seed_<seed>)."),
        debug: bool = typer.Option(False, "--debug", help="Merge configs/debug.yaml (quick run)."),
        max_epochs: int = typer.Option(None, "--max-epochs", help="Override the epoch count."),
        run_name: str = typer.Option(
            None, "--run-name", help="Run folder name (default seed_<seed>)."
        ),
        rater: str = typer.Option(None, "--rater", help="k (1-based), mean, random or weighted."),
        patience: int = typer.Option(
            None,
            "--patience",
            help="Early stopping: validations without a Dice gain (0: off; default: the bundle's).",
        ),
        data_root: str = typer.Option(
            None,
            "--data-root",
            help="Dataset root (default: $CALIBSEG_DATA_<NAME>, else the bundle's recorded root).",
        ),
    ) -> None:
        """Train a bundle's network; rerunning the same command resumes from the last checkpoint.

        An s3:// bundle trains in a local cache folder and uploads the run folder after every
        epoch; a rerun (on any machine) resumes from the checkpoint on S3.

        Example: calibseg train bundles/synthetic_softl1ace_dice_ce_1a2b3c4d --seed 0 --max-epochs 20
        """
        from calibseg.bundles import require_bundle
        from calibseg.bundles.runner import train as run_train
        from calibseg.storage import redact

        require_bundle(bundle)
        run = run_train(
            bundle,
            seed=seed,
            max_epochs=max_epochs,
            debug=debug,
            run_name=run_name,
            rater=_rater(rater),
            patience=patience,
            data_root=data_root,
        )
        run = redact(run)
        if os.environ.get("RANK", "0") == "0":  # one line per torchrun job, not per process
            console.print(f"trained: [bold]{run}[/] (logs in {run}/logs)", soft_wrap=True)

    @app.command("predict")
    def predict(
        bundle: str = typer.Argument(..., help="Bundle folder or s3:// URL."),
        seed: int = typer.Option(0, "--seed", help="Run seed (run folder seed_<seed>)."),
        checkpoint: str = typer.Option(
            None, "--checkpoint", help="best, final, last or a path (default: pred_checkpoint)."
        ),
        float16: bool = typer.Option(
            None, "--float16/--float32", help="16-bit probabilities (default: pred_float16)."
        ),
        run_name: str = typer.Option(
            None, "--run-name", help="Run folder name (default seed_<seed>)."
        ),
        split: str = typer.Option(
            None, "--split", help="training, validation or test (default: pred_split)."
        ),
        data_root: str = typer.Option(
            None,
            "--data-root",
            help="Dataset root (default: $CALIBSEG_DATA_<NAME>, else the bundle's recorded root).",
        ),
        raw_labels: bool = typer.Option(
            False,
            "--raw-labels",
            help="Write <case>_seg with the dataset's raw label values (BraTS: enhancing tumour 4) "
            "instead of class indices.",
        ),
    ) -> None:
        """Predict a split with a trained run: <case>_prob.nii.gz (x, y, z, C) and <case>_seg.nii.gz.

        Example: calibseg predict bundles/synthetic_softl1ace_dice_ce_1a2b3c4d --seed 0 --checkpoint best
        """
        from calibseg.bundles import load_bundle
        from calibseg.bundles.runner import predict as run_predict
        from calibseg.storage import redact

        cfg = load_bundle(bundle).get  # configs/inference_pred.yaml gives the defaults
        checkpoint = checkpoint or cfg("pred_checkpoint", "best")
        float16 = bool(cfg("pred_float16", False)) if float16 is None else float16
        split = split or cfg("pred_split", "test")
        out = run_predict(
            bundle,
            seed=seed,
            checkpoint=checkpoint,
            run_name=run_name,
            cases=split,
            float16=float16,
            data_root=data_root,
            raw_labels=raw_labels,
        )
        console.print(f"predictions: [bold]{redact(out)}[/]", soft_wrap=True)
