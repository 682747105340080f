"""nnU-Net v2 commands (extra calibseg[nnunet]): convert multi-rater data, train with mL1-ACE, rater × seed members, predict with probabilities."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

import typer

from calibseg.cli.common import CalibsegError, console
from calibseg.nnunet.options import TrainOptions

app = typer.Typer(no_args_is_help=True)
ensemble_app = typer.Typer(no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble", help="Rater × seed nnU-Net ensemble members.")

_LOSS_HELP = "dicece (nnU-Net's Dice+CE), hardl1ace or softl1ace (Dice+CE + mL1-ACE)."


def _require() -> None:
    """Without nnunetv2: the install command as the error (markup-escaped for the one error
    line, so ``calibseg[nnunet]`` keeps its brackets)."""
    from rich.markup import escape

    from calibseg.nnunet import INSTALL_HINT, nnunet_available

    if not nnunet_available():
        raise CalibsegError(escape(INSTALL_HINT))


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


def _option(name: str, annotation: type, default, help: str) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(help=help)],
    )


# training options shared by `train` and `ensemble train` (the seed is each command's own)
_TRAIN_OPTIONS = (
    _option("loss", str, "hardl1ace", _LOSS_HELP),
    _option("patience", int, 0, "Early stopping: epochs without EMA pseudo-Dice gain."),
    _option("min_delta", float, 0.0, "Early stopping: smallest gain that counts."),
    _option("ace_weight", float, 1.0, "Weight of the mL1-ACE term."),
    _option("num_bins", int, 20, "Bins of the mL1-ACE term."),
    _option("epochs", int | None, None, "Epochs (nnU-Net: 1000)."),
    _option("iterations", int | None, None, "Training iterations per epoch (250)."),
    _option("val_iterations", int | None, None, "Validation iterations per epoch (50)."),
    _option("device", str, "cpu", "cpu or cuda."),
    _option("validate", bool, True, "Run nnU-Net's final validation afterwards."),
)


def _with_train_options(command: Callable) -> Callable:
    """Add the shared training options to ``command``, which receives them as ``run``:
    ``{"loss", "options" (TrainOptions without seed), "device", "validate"}``."""
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "run"]

    @functools.wraps(command)
    def wrapper(**kwargs):
        v = {p.name: kwargs.pop(p.name) for p in _TRAIN_OPTIONS}
        options = TrainOptions(
            patience=v["patience"],
            min_delta=v["min_delta"],
            ace_weight=v["ace_weight"],
            num_bins=v["num_bins"],
            epochs=v["epochs"],
            iterations_per_epoch=v["iterations"],
            val_iterations_per_epoch=v["val_iterations"],
        )
        run = {"loss": v["loss"], "options": options, "device": v["device"]}
        return command(run={**run, "validate": v["validate"]}, **kwargs)

    del wrapper.__wrapped__  # typer reads the signature below, not the command's
    wrapper.__signature__ = sig.replace(parameters=[*own, *_TRAIN_OPTIONS])
    wrapper.__annotations__ = {
        p.name: p.annotation for p in wrapper.__signature__.parameters.values()
    }
    return wrapper


@app.command("train")
@_with_train_options
def train(
    dataset: str = typer.Argument(..., help="nnU-Net dataset id or DatasetXXX_Name."),
    configuration: str = typer.Argument(..., help="nnU-Net configuration, e.g. 3d_fullres."),
    fold: str = typer.Argument(..., help="Fold (0-4) or 'all'."),
    seed: int | None = typer.Option(None, help="Seed of He initialisation and data order."),
    results: str | None = typer.Option(None, help="Results folder (default: $nnUNet_results)."),
    resume: bool = typer.Option(False, "--continue", help="Continue from the last checkpoint."),
    run: dict | None = None,
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
        results=results,
        continue_training=resume,
        **{**run, "options": replace(run["options"], seed=seed)},
    )
    console.print(f"[green]trained[/] → {out}")


@ensemble_app.command("train")
@_with_train_options
def ensemble_train(
    out: str = typer.Argument(..., help="Ensemble folder: one member folder per rater × seed."),
    dataset_id: int = typer.Option(..., "--id", help="Dataset id of rater 1 (as in convert)."),
    raters: str = typer.Option("1,2,3", help="Rater numbers (rater k: dataset id+k-1)."),
    seeds: str = typer.Option("11,22,33", help="Comma-separated seeds."),
    configuration: str = typer.Option("3d_fullres", help="nnU-Net configuration."),
    fold: str = typer.Option("0", help="Fold (0-4) or 'all'."),
    scheduler: str | None = typer.Option(None, help="Dask scheduler address for the members."),
    workers: int | None = typer.Option(None, help="Train members on N local Dask workers."),
    run: dict | None = None,
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
        **run,
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
