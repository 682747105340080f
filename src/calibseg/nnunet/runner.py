"""Running unmodified nnU-Net v2 with calibseg's trainers: plan/preprocess, train, predict,
and rater × seed ensemble members.

nnU-Net looks trainers up only inside its own package, so :func:`train` builds the trainer
object directly from nnU-Net's plans and preprocessed data (as nnU-Net's ``run_training``
does) and runs nnU-Net's own loop; the results folder is nnU-Net's
(``<results>/<DatasetXXX_Name>/<Trainer>__<Plans>__<config>/fold_<f>``), so
``nnUNetv2_predict`` works on it once ``nnUNet_extTrainer`` points at
:func:`calibseg.nnunet.trainer_path`.

nnU-Net reads its folders from the environment variables ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` at call time; the ``results`` arguments below
set ``nnUNet_results`` for the duration of one call.

Ensemble members live in calibseg's member layout: ``<out>/<member>/`` is that member's
``nnUNet_results`` and ``<out>/<member>/predictions/`` its nnU-Net predictions with
``--save_probabilities`` (``<case>.npz`` + ``<case>.nii.gz``), which
``calibseg ensemble combine --bundle <out>`` and ``calibseg metrics compute`` read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints,
    plan_experiments,
    preprocess,
)
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from calibseg import storage
from calibseg.distributed import run_training_jobs
from calibseg.ensemble.members import member_name
from calibseg.nnunet import trainer_path
from calibseg.nnunet.options import TrainOptions
from calibseg.nnunet.trainers import TRAINERS, nnUNetTrainerCalibseg

__all__ = [
    "ENV_VARS",
    "nnunet_env",
    "plan_and_preprocess",
    "build_trainer",
    "train",
    "model_folder",
    "load_checkpoint",
    "predict",
    "train_members",
    "predict_members",
]

log = logging.getLogger(__name__)

ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _require_env(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise ValueError(
            f"set nnU-Net's environment variable(s) {', '.join(missing)} "
            "(folders for raw data, preprocessed data and results)."
        )
    return {n: os.environ[n] for n in names}


@contextlib.contextmanager
def nnunet_env(**values: str | None) -> Iterator[None]:
    """Set environment variables (None: leave as is) for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _with_ext_trainer() -> str:
    ours = trainer_path()
    cur = os.environ.get("nnUNet_extTrainer", "")
    parts = [p for p in cur.split(os.pathsep) if p]
    return os.pathsep.join([ours, *[p for p in parts if p != ours]])


def plan_and_preprocess(
    dataset_ids: Sequence[int],
    configurations: Sequence[str] = ("3d_fullres",),
    num_processes: int = 2,
    verify: bool = True,
) -> list[str]:
    """nnU-Net's fingerprint extraction, experiment planning and preprocessing (its Python
    API, as ``nnUNetv2_plan_and_preprocess``); returns the preprocessed dataset folders.

    ``nnUNet_n_proc_DA=0`` (no augmentation workers in training) is read as 1 while planning.
    Raises ValueError if ``nnUNet_raw``/``nnUNet_preprocessed`` are not set.
    """
    env = _require_env("nnUNet_raw", "nnUNet_preprocessed")
    ids = [int(i) for i in dataset_ids]
    if not ids:
        raise ValueError("no dataset id given.")
    extract_fingerprints(
        ids, num_processes=num_processes, check_dataset_integrity=verify, show_progress_bar=False
    )
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA while it sizes a
    # network; 0 (no augmentation workers, valid for training) would fail there
    da = os.environ.get("nnUNet_n_proc_DA")
    with nnunet_env(nnUNet_n_proc_DA="1" if da is not None and da.strip() == "0" else None):
        plan_experiments(ids)
    preprocess(
        ids,
        configurations=tuple(configurations),
        num_processes=[num_processes] * len(configurations),
        show_progress_bar=False,
    )
    return [os.path.join(env["nnUNet_preprocessed"], maybe_convert_to_dataset_name(i)) for i in ids]


def _fold(fold: int | str) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except ValueError:
        raise ValueError(f"fold must be an integer or 'all', got {fold!r}.") from None


def build_trainer(
    dataset: int | str,
    configuration: str,
    fold: int | str,
    loss: str = "dicece",
    options: TrainOptions | None = None,
    plans: str = "nnUNetPlans",
    device: str = "cpu",
    continue_training: bool = False,
) -> nnUNetTrainerCalibseg:
    """A configured, not yet initialised calibseg trainer built from nnU-Net's plans and
    preprocessed ``dataset.json`` (as nnU-Net's ``get_trainer_from_args`` does). Arguments as
    in :func:`train`; ``nnUNet_preprocessed`` and ``nnUNet_results`` must be set."""
    if loss not in TRAINERS:
        raise ValueError(f"unknown loss {loss!r}: use one of {', '.join(TRAINERS)}.")
    f = _fold(fold)
    env = _require_env("nnUNet_preprocessed", "nnUNet_results")
    name = maybe_convert_to_dataset_name(dataset if isinstance(dataset, int) else str(dataset))
    pre = os.path.join(env["nnUNet_preprocessed"], name)
    plans_file = os.path.join(pre, plans + ".json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(
            f"no {plans}.json in {pre}: run `calibseg nnunet convert` (or "
            "nnUNetv2_plan_and_preprocess) first."
        )
    with open(plans_file) as fh:
        plans_dict = json.load(fh)
    if configuration not in plans_dict.get("configurations", {}):
        raise ValueError(
            f"configuration {configuration!r} is not in {plans_file} "
            f"(available: {', '.join(plans_dict.get('configurations', {}))})."
        )
    with open(os.path.join(pre, "dataset.json")) as fh:
        dataset_json = json.load(fh)
    plans_dict["continue_training"] = continue_training
    trainer = TRAINERS[loss](
        plans=plans_dict,
        configuration=configuration,
        fold=f,
        dataset_json=dataset_json,
        device=torch.device(device),
    )
    trainer.set_options(options or TrainOptions())
    return trainer


def train(
    dataset: int | str,
    configuration: str,
    fold: int | str,
    loss: str = "dicece",
    options: TrainOptions | None = None,
    plans: str = "nnUNetPlans",
    device: str = "cpu",
    results: str | None = None,
    continue_training: bool = False,
    validate: bool = True,
) -> str:
    """Train one nnU-Net model with a calibseg trainer; returns its fold folder.

    ``loss``: ``dicece`` (nnU-Net's Dice+CE), ``hardl1ace`` or ``softl1ace`` (Dice+CE +
    ``ace_weight`` × mL1-ACE with ``num_bins`` bins). ``options``: seed, early stopping, ACE
    weight and bins, shorter runs (:class:`~calibseg.nnunet.options.TrainOptions`; default:
    nnU-Net's run, unseeded). ``results`` replaces ``nnUNet_results`` for this run. With
    ``validate`` nnU-Net's final validation on the fold's validation cases runs afterwards (as
    ``nnUNetv2_train`` does).

    Raises ValueError for an unknown loss, fold or configuration or missing
    nnU-Net folders, FileNotFoundError if the dataset is not preprocessed.
    """
    with nnunet_env(nnUNet_results=results):
        trainer = build_trainer(
            dataset, configuration, fold, loss, options, plans, device, continue_training
        )
        if continue_training:
            for ck in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
                path = os.path.join(trainer.output_folder, ck)
                if os.path.isfile(path):
                    trainer.load_checkpoint(path)
                    break
        trainer.run_training()
        if validate:
            trainer.perform_actual_validation(False)
        return str(trainer.output_folder)


def model_folder(
    dataset: int | str,
    configuration: str,
    loss: str = "dicece",
    plans: str = "nnUNetPlans",
    results: str | None = None,
) -> str:
    """nnU-Net's model folder ``<results>/<DatasetXXX_Name>/<Trainer>__<plans>__<config>``."""
    if loss not in TRAINERS:
        raise ValueError(f"unknown loss {loss!r}: use one of {', '.join(TRAINERS)}.")
    with nnunet_env(nnUNet_results=results):
        env = _require_env("nnUNet_results")
        name = maybe_convert_to_dataset_name(dataset if isinstance(dataset, int) else str(dataset))
        trainer = TRAINERS[loss].__name__
        return os.path.join(env["nnUNet_results"], name, f"{trainer}__{plans}__{configuration}")


# non-tensor values of nnU-Net's checkpoints (NumPy scalars in its logs), allowed by
# torch.load(weights_only=True)
_CHECKPOINT_GLOBALS = [
    np.dtype,
    np._core.multiarray.scalar,
    *(t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)),
]


def load_checkpoint(path: str) -> dict:
    """An nnU-Net checkpoint (``network_weights``, ``trainer_name``, ``init_args``, …) loaded
    with ``torch.load(weights_only=True)`` (tensors, plain types and NumPy scalars only)."""
    with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _trainer_class(name: str) -> type:
    """calibseg's trainer of that name, else nnU-Net's lookup in its own package and
    ``nnUNet_extTrainer`` (which imports every nnU-Net trainer module, some of them needing
    timm)."""
    for cls in TRAINERS.values():
        if cls.__name__ == name:
            return cls
    return recursive_find_trainer_class_by_name(name)


def _initialize_predictor(
    predictor: nnUNetPredictor, model: str, folds: Sequence[int | str], checkpoint: str
) -> None:
    """``nnUNetPredictor.initialize_from_trained_model_folder`` for a model folder, finding
    calibseg's trainers directly and loading the checkpoints with ``weights_only=True``."""
    with open(os.path.join(model, "dataset.json")) as fh:
        dataset_json = json.load(fh)
    with open(os.path.join(model, "plans.json")) as fh:
        plans_manager = PlansManager(json.load(fh))
    checkpoints = [load_checkpoint(os.path.join(model, f"fold_{f}", checkpoint)) for f in folds]
    first = checkpoints[0]
    configuration = plans_manager.get_configuration(first["init_args"]["configuration"])
    network = _trainer_class(first["trainer_name"]).build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    parameters = [ck["network_weights"] for ck in checkpoints]
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration,
        parameters,
        dataset_json,
        first["trainer_name"],
        first.get("inference_allowed_mirroring_axes"),
    )


def predict(
    model: str,
    input_folder: str,
    output_folder: str,
    folds: Sequence[int | str] = (0,),
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    num_processes: int = 1,
    mirroring: bool = True,
) -> str:
    """nnU-Net inference with ``save_probabilities`` into ``output_folder`` (complete or absent).

    ``model``: an nnU-Net model folder (holding ``fold_<f>/``); ``input_folder``: images named
    ``<case>_0000.nii.gz``. Writes ``<case>.nii.gz`` (segmentation) and ``<case>.npz``
    (``probabilities`` [C, z, y, x]) per case. Raises FileNotFoundError for a missing model
    checkpoint or input folder, FileExistsError if ``output_folder`` exists.
    """
    for fo in folds:
        ck = os.path.join(model, f"fold_{_fold(fo)}", checkpoint)
        if not os.path.isfile(ck):
            raise FileNotFoundError(f"no checkpoint {ck}: train the model first.")
    if not os.path.isdir(input_folder):
        raise FileNotFoundError(f"no such input folder: {input_folder}")
    if os.path.exists(output_folder):
        raise FileExistsError(f"{output_folder} exists; remove it to predict again.")
    parent = os.path.dirname(os.path.abspath(output_folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".predictions.", dir=parent)
    try:
        with nnunet_env(nnUNet_extTrainer=_with_ext_trainer()):
            predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=mirroring,
                perform_everything_on_device=device != "cpu",
                device=torch.device(device),
                allow_tqdm=False,
            )
            _initialize_predictor(predictor, model, [_fold(x) for x in folds], checkpoint)
            predictor.predict_from_files(
                input_folder,
                tmp,
                save_probabilities=True,
                overwrite=True,
                num_processes_preprocessing=num_processes,
                num_processes_segmentation_export=num_processes,
            )
        os.replace(tmp, output_folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return output_folder


def train_members(
    out: str,
    datasets: dict[int | str, int | str],
    seeds: Sequence[int],
    configuration: str,
    fold: int | str = 0,
    loss: str = "dicece",
    options: TrainOptions | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    on_done: Callable[[str, str], None] | None = None,
    **train_kwargs,
) -> dict[str, str]:
    """Train one member per (rater, seed): ``datasets`` maps a rater (1-based int or
    ``"majority"``) to its nnU-Net dataset; member ``rater<k>_seed<s>`` (``majority_seed<s>``)
    trains into ``<out>/<member>/`` as its ``nnUNet_results`` with ``options`` and its seed.
    ``train_kwargs`` go to :func:`train`. Returns ``{member: fold folder}``.

    With ``scheduler`` or ``workers`` the members are Dask tasks
    (:func:`calibseg.distributed.run_training_jobs`), otherwise they run one after another.
    """
    if not datasets or not seeds:
        raise ValueError("give at least one rater dataset and one seed.")
    plan = []
    for rater, ds in datasets.items():
        for s in seeds:
            name = member_name(rater, s)
            kw = {
                "dataset": ds,
                "configuration": configuration,
                "fold": fold,
                "loss": loss,
                "options": replace(options or TrainOptions(), seed=int(s)),
                "results": os.path.abspath(os.path.join(out, name)),
                **train_kwargs,
            }
            plan.append((name, kw))
    return run_training_jobs(
        [(name, train, kw) for name, kw in plan],
        scheduler=scheduler,
        workers=workers,
        on_done=on_done,
    )


def predict_members(
    out: str,
    input_folder: str,
    members: Sequence[str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "cpu",
    num_processes: int = 1,
    on_done: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Predict with each trained member of ``out`` into ``<out>/<member>/predictions/``;
    members whose predictions exist are skipped. Returns ``{member: predictions folder}``."""
    if not os.path.isdir(out):
        raise FileNotFoundError(f"no such ensemble folder: {out}")
    names = list(members) if members else sorted(_trained_members(out))
    if not names:
        raise FileNotFoundError(
            f"no trained members in {out}: run `calibseg nnunet ensemble train`."
        )
    done: dict[str, str] = {}
    for name in names:
        models = _trained_members(out).get(name)
        if not models:
            raise FileNotFoundError(f"member {name} has no trained model in {out}.")
        if len(models) > 1:
            raise ValueError(f"member {name} holds several models ({', '.join(models)}).")
        model, fold = models[0]
        dest = storage.join(out, name, "predictions")
        if not os.path.isdir(dest):
            predict(model, input_folder, dest, (fold,), checkpoint, device, num_processes)
        done[name] = dest
        if on_done:
            on_done(name, dest)
    return done


def _trained_members(out: str) -> dict[str, list[tuple[str, str]]]:
    """``{member: [(model folder, fold)]}`` for the members of ``out`` with a final checkpoint."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(os.listdir(out)):
        root = os.path.join(out, name)
        if not os.path.isdir(root) or name.startswith("."):
            continue
        for ds in sorted(os.listdir(root)):
            ds_dir = os.path.join(root, ds)
            if not ds.startswith("Dataset") or not os.path.isdir(ds_dir):
                continue
            for model in sorted(os.listdir(ds_dir)):
                mdir = os.path.join(ds_dir, model)
                for fd in sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []:
                    if fd.startswith("fold_") and os.path.isfile(
                        os.path.join(mdir, fd, "checkpoint_final.pth")
                    ):
                        found.setdefault(name, []).append((mdir, fd[len("fold_") :]))
    return found
