"""nnU-Net v2 commands (extra calibseg[nnunet]): convert multi-rater data, train with mL1-ACE, rater × seed members, predict with probabilities."""

from __future__ import annotations

import typer

from calibseg.cli.common import console, err_console

app = typer.Typer(no_args_is_help=True)
ensemble_app = typer.Typer(no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble", help="Rater × seed nnU-Net ensemble members.")

_LOSS_HELP = "dicece (nnU-Net's Dice+CE), hardl1ace or softl1ace (Dice+CE + mL1-ACE)."


def _require() -> None:
    """Without nnunetv2: the install command as one error line (markup-escaped), exit 1."""
    from rich.markup import escape

    from calibseg.nnunet import INSTALL_HINT, nnunet_available

    if not nnunet_available():
        err_console.print(
            f"[bold red]error:[/] {escape(INSTALL_HINT)}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1)


def _ids(text: str) -> list[int]:
    toks = [t.strip() for t in text.split(",") if t.strip()]
    if not toks or not all(t.isdigit() for t in toks):
        raise ValueError(f"dataset ids must be integers separated by commas, got {text!r}.")
    return [int(t) for t in toks]


@app.command("trainer-path")
def trainer_path_cmd() -> None:
    """Print the folder of calibseg's trainers, for nnU-Net's nnUNet_extTrainer.

    Example: export nnUNet_extTrainer=$(calibseg nnunet trainer-path)
    """
    from calibseg.nnunet import trainer_path

    _require()
    print(trainer_path())


@app.command("convert")
def convert(
    source: str = typer.Argument(
        ..., help="Synthetic dataset.json (or its folder) or a CURVAS-style root."
    ),
    dataset_id: int = typer.Option(..., "--id", help="Dataset id of rater 1 (rater k: id+k-1)."),
    name: str = typer.Option("Calibseg", help="Dataset name stem (letters and digits)."),
    majority: bool = typer.Option(True, help="Also write a majority-vote dataset (id+K)."),
    test_cases: int = typer.Option(0, help="The last N cases go to imagesTs only."),
    raw: str | None = typer.Option(None, help="nnU-Net raw folder (default: $nnUNet_raw)."),
    plan: bool = typer.Option(True, help="Run nnU-Net's fingerprint/plan/preprocess."),
    configurations: str = typer.Option("3d_fullres", help="Configurations to preprocess."),
    processes: int = typer.Option(2, help="Processes for nnU-Net's planning/preprocessing."),
    overwrite: bool = typer.Option(False, help="Replace datasets with the same ids."),
) -> None:
    """One nnU-Net raw dataset per rater (and the majority vote), then plan and preprocess.

    Example: calibseg nnunet convert data/synthetic --id 501 --name Synth --test-cases 4
    """
    import os

    _require()
    from calibseg.nnunet.convert import convert_multirater
    from calibseg.nnunet.runner import plan_and_preprocess

    raw = raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("give --raw or set nnU-Net's nnUNet_raw.")
    written = convert_multirater(
        source,
        raw,
        dataset_id,
        name=name,
        majority=majority,
        test_cases=test_cases,
        overwrite=overwrite,
    )
    for d in written:
        console.print(
            f"[green]{d['name']}[/] rater {d['rater']}: {len(d['train'])} training, "
            f"{len(d['test'])} test cases → {d['path']}"
        )
    if plan:
        confs = [c.strip() for c in configurations.split(",") if c.strip()]
        with_env = {"nnUNet_raw": raw}
        from calibseg.nnunet.runner import nnunet_env

        with nnunet_env(**with_env):
            for p in plan_and_preprocess([d["id"] for d in written], confs, processes):
                console.print(f"preprocessed → {p}")


def _train_options(
    loss: str,
    patience: int,
    min_delta: float,
    ace_weight: float,
    num_bins: int,
    epochs: int | None,
    iterations: int | None,
    val_iterations: int | None,
    device: str,
    validate: bool,
) -> dict:
    return {
        "loss": loss,
        "patience": patience,
        "min_delta": min_delta,
        "ace_weight": ace_weight,
        "num_bins": num_bins,
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "val_iterations_per_epoch": val_iterations,
        "device": device,
        "validate": validate,
    }


@app.command("train")
def train(
    dataset: str = typer.Argument(..., help="nnU-Net dataset id or DatasetXXX_Name."),
    configuration: str = typer.Argument(..., help="nnU-Net configuration, e.g. 3d_fullres."),
    fold: str = typer.Argument(..., help="Fold (0-4) or 'all'."),
    loss: str = typer.Option("hardl1ace", help=_LOSS_HELP),
    seed: int | None = typer.Option(None, help="Seed of He initialisation and data order."),
    patience: int = typer.Option(0, help="Early stopping: epochs without EMA pseudo-Dice gain."),
    min_delta: float = typer.Option(0.0, help="Early stopping: smallest gain that counts."),
    ace_weight: float = typer.Option(1.0, help="Weight of the mL1-ACE term."),
    num_bins: int = typer.Option(20, help="Bins of the mL1-ACE term."),
    epochs: int | None = typer.Option(None, help="Epochs (nnU-Net: 1000)."),
    iterations: int | None = typer.Option(None, help="Training iterations per epoch (250)."),
    val_iterations: int | None = typer.Option(None, help="Validation iterations per epoch (50)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    results: str | None = typer.Option(None, help="Results folder (default: $nnUNet_results)."),
    resume: bool = typer.Option(False, "--continue", help="Continue from the last checkpoint."),
    validate: bool = typer.Option(True, help="Run nnU-Net's final validation afterwards."),
) -> None:
    """Train one nnU-Net model with a calibseg trainer (a normal nnU-Net results folder).

    Example: calibseg nnunet train 501 3d_fullres 0 --loss hardl1ace --seed 7 --patience 20
    """
    _require()
    from calibseg.nnunet.runner import train as run_train

    out = run_train(
        int(dataset) if dataset.isdigit() else dataset,
        configuration,
        fold,
        seed=seed,
        results=results,
        continue_training=resume,
        **_train_options(
            loss,
            patience,
            min_delta,
            ace_weight,
            num_bins,
            epochs,
            iterations,
            val_iterations,
            device,
            validate,
        ),
    )
    console.print(f"[green]trained[/] → {out}")


@ensemble_app.command("train")
def ensemble_train(
    out: str = typer.Argument(..., help="Ensemble folder: one member folder per rater × seed."),
    dataset_id: int = typer.Option(..., "--id", help="Dataset id of rater 1 (as in convert)."),
    raters: str = typer.Option("1,2,3", help="Rater numbers (rater k: dataset id+k-1)."),
    seeds: str = typer.Option("11,22,33", help="Comma-separated seeds."),
    configuration: str = typer.Option("3d_fullres", help="nnU-Net configuration."),
    fold: str = typer.Option("0", help="Fold (0-4) or 'all'."),
    loss: str = typer.Option("hardl1ace", help=_LOSS_HELP),
    patience: int = typer.Option(0, help="Early stopping: epochs without EMA pseudo-Dice gain."),
    min_delta: float = typer.Option(0.0, help="Early stopping: smallest gain that counts."),
    ace_weight: float = typer.Option(1.0, help="Weight of the mL1-ACE term."),
    num_bins: int = typer.Option(20, help="Bins of the mL1-ACE term."),
    epochs: int | None = typer.Option(None, help="Epochs (nnU-Net: 1000)."),
    iterations: int | None = typer.Option(None, help="Training iterations per epoch (250)."),
    val_iterations: int | None = typer.Option(None, help="Validation iterations per epoch (50)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    validate: bool = typer.Option(True, help="Run nnU-Net's final validation per member."),
    scheduler: str | None = typer.Option(None, help="Dask scheduler address for the members."),
    workers: int | None = typer.Option(None, help="Train members on N local Dask workers."),
) -> None:
    """Train one nnU-Net member per (rater, seed) into OUT/rater<k>_seed<s>/.

    Example: calibseg nnunet ensemble train ens --id 501 --raters 1,2 --seeds 11,22 --loss hardl1ace
    """
    from calibseg.ensemble.members import parse_raters, parse_seeds

    _require()
    from calibseg.nnunet.runner import train_members

    r = parse_raters(raters)
    if not all(isinstance(x, int) for x in r):
        raise ValueError("nnU-Net members are per rater number (e.g. --raters 1,2,3).")
    datasets = {k: dataset_id + int(k) - 1 for k in r}
    runs = train_members(
        out,
        datasets,
        parse_seeds(seeds),
        configuration,
        fold,
        scheduler=scheduler,
        workers=workers,
        on_done=lambda n, d: console.print(f"[green]done[/] {n} → {d}"),
        **_train_options(
            loss,
            patience,
            min_delta,
            ace_weight,
            num_bins,
            epochs,
            iterations,
            val_iterations,
            device,
            validate,
        ),
    )
    console.print(f"{len(runs)} members trained in {out}")


@app.command("predict")
def predict(
    target: str = typer.Argument(
        ..., help="Ensemble folder (members) or, with --output, one nnU-Net model folder."
    ),
    input: str = typer.Option(..., help="Images named <case>_0000.nii.gz (e.g. imagesTs)."),
    output: str | None = typer.Option(None, help="Output folder for a single model."),
    members: str | None = typer.Option(None, help="Comma-separated members (default: all)."),
    folds: str = typer.Option("0", help="Folds of a single model (comma-separated)."),
    checkpoint: str = typer.Option("checkpoint_final.pth", help="Checkpoint file name."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    processes: int = typer.Option(1, help="nnU-Net pre/post-processing processes."),
) -> None:
    """nnU-Net inference with probabilities (.npz + .nii.gz per case) into calibseg's member
    layout OUT/<member>/predictions/ (or --output for one model folder).

    Example: calibseg nnunet predict ens --input $nnUNet_raw/Dataset501_SynthRater1/imagesTs
    """
    _require()
    from calibseg.nnunet.runner import predict as run_predict
    from calibseg.nnunet.runner import predict_members

    if output:
        fl = [f.strip() for f in folds.split(",") if f.strip()]
        run_predict(target, input, output, fl, checkpoint, device, processes)
        console.print(f"[green]predicted[/] → {output}")
        return
    names = [m.strip() for m in members.split(",") if m.strip()] if members else None
    done = predict_members(
        target,
        input,
        names,
        checkpoint,
        device,
        processes,
        on_done=lambda n, d: console.print(f"[green]predicted[/] {n} → {d}"),
    )
    console.print(
        f"{len(done)} members predicted; next: calibseg ensemble combine --bundle {target}"
    )
