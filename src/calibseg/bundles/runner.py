"""``calibseg train``: the bundle's own ``training`` workflow, plus what MONAI does not do.

The trainer, validator and handlers are the ones ``python -m monai.bundle run training``
builds from the bundle's configs (``train#trainer``, see ``configs/train.yaml``). This layer
adds: the run's seed, rater and epoch / patience overrides; exact resume from
``checkpoints/last.pt`` (network, optimiser, scheduler, engine counts, run record and RNG states,
restored with Ignite's ``Checkpoint.load_objects`` after a ``weights_only`` load that refuses a
foreign or crafted checkpoint); the run's log file; ``resolved_config.json``; ``s3://``
bundles (trained in a local working copy mirrored from and to S3 after every epoch); and DDP
under ``torchrun`` (``WORLD_SIZE`` > 1: the process group is joined here, the configs shard the
training set and wrap the network; rank 0 alone writes).

Prediction is :func:`calibseg.bundles.predict.predict`, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from ignite.engine import Events
from ignite.handlers import Checkpoint

from calibseg import storage, storage_mirror
from calibseg.bundles import BUNDLE_FILES, DATA_ROOT_FILE, bundle_hash, load_bundle, require_bundle
from calibseg.bundles.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from calibseg.bundles.logs import bundle_logging, to_log_file
from calibseg.bundles.predict import predict, run_dir
from calibseg.bundles.workflow import check_rater
from calibseg.distributed import ddp

__all__ = ["train", "predict", "load_checkpoint", "run_dir", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

STAGED = (*BUNDLE_FILES, "splits.json", DATA_ROOT_FILE)
"""The files of a remote bundle copied into its local working folder."""


def train(
    bundle: str,
    seed: int = 0,
    max_epochs: int | None = None,
    debug: bool = False,
    run_name: str | None = None,
    rater: Any = None,
    he_init: bool = True,
    device: str | None = None,
    patience: int | None = None,
    data_root: str | None = None,
) -> str:
    """Train the bundle's network for one seed; return the run folder.

    ``patience`` (validations without a Dice gain) overrides the bundle's
    ``early_stopping_patience``; 0 disables early stopping. ``rater``: None (the "label"), k
    (k-th rater, 1-based), "mean" (soft rater average), "random" or "weighted"; validation
    always uses the "label". ``data_root`` overrides the bundle's data root.

    Reruns continue from ``checkpoints/last.pt`` (a checkpoint of another bundle, seed or
    rater is refused with ValueError). Writes ``checkpoints/{last,best,final}.pt``,
    ``logs/train.log``, ``logs/tensorboard/``, ``validation/`` (reliability diagram of the
    latest validation), ``resolved_config.json`` and ``training_summary.json``.

    An ``s3://`` bundle trains in a local working folder (under ``$CALIBSEG_CACHE/runs``) that
    first mirrors the remote run's checkpoints and logs (so reruns resume from S3); the run
    folder is uploaded after every epoch and at the end, and the returned run is the URL.
    """
    require_bundle(bundle)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    overrides: dict[str, Any] = {"seed": seed, "rater": check_rater(rater)}
    if max_epochs is not None:
        if int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
        overrides["max_epochs"] = int(max_epochs)
    if patience is not None:
        if isinstance(patience, bool) or int(patience) < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}.")
        overrides["early_stopping_patience"] = int(patience)
    if not he_init:
        overrides["he_init"] = False
    if device is not None:
        overrides["device"] = f"$torch.device({str(device)!r})"
    run = run_dir(bundle, seed, run_name)
    job = {"bundle": str(bundle), "run": run, "debug": debug, "data_root": data_root}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if storage.is_remote(run):
            raise ValueError(
                f"distributed training (WORLD_SIZE={os.environ['WORLD_SIZE']}) needs a local "
                f"bundle, not {storage.redact(bundle)}; copy the bundle to a local or shared "
                "folder, or train it with a single process."
            )
        owns_group = not ddp.is_distributed()
        # rank 0 alone writes while the others wait at a collective: allow an hour
        ddp.init_from_env(timeout_s=3600.0)
        try:
            logs = bundle_logging(bundle, os.path.join(run, "logs"))
            with logs if ddp.is_main_process() else nullcontext():
                return _train(bundle, run, overrides, job)
        finally:
            if owns_group:
                ddp.cleanup()
    if not storage.is_remote(run):
        with bundle_logging(bundle, os.path.join(run, "logs")):
            return _train(bundle, run, overrides, job)
    local_bundle = storage_mirror.stage_bundle(bundle, STAGED)
    local_run = os.path.join(local_bundle, os.path.basename(run))
    storage_mirror.pull_run(run, local_run)

    def sync() -> None:
        storage_mirror.push_run(local_run, run)

    with bundle_logging(local_bundle, os.path.join(local_run, "logs")):
        logger.info("run %s works in %s", storage.redact(run), local_run)
        try:
            _train(local_bundle, local_run, overrides, job, sync)
        except BaseException:
            try:  # keep what was written (logs, last checkpoint) next to the bundle
                sync()
            except Exception as e:  # noqa: BLE001 - the training error is the one to report
                logger.warning("could not upload %s after the failure: %s", local_run, e)
            raise
        sync()
    return run


def _train(
    bundle: str,
    run: str,
    overrides: dict[str, Any],
    job: dict[str, Any],
    on_epoch: Callable[[], None] | None = None,
) -> str:
    """Build the bundle's ``training`` workflow for the local run folder ``run``, resume it
    from ``last.pt`` if there is one, run it. ``on_epoch()`` is called after each epoch's
    checkpoint and summary are written (remote runs upload there)."""
    if job["data_root"]:
        overrides = {**overrides, "data_root": str(job["data_root"])}
    parser = load_bundle(
        bundle,
        debug=job["debug"],
        overrides={**overrides, "bundle_root": bundle, "run_name": os.path.basename(run)},
    )
    seed, rater = overrides["seed"], overrides["rater"]
    last_path = os.path.join(run, "checkpoints", "last.pt")
    state = load_checkpoint(last_path, bundle) if os.path.exists(last_path) else None
    if state is not None:
        done = _check_resumable(state, last_path, seed, rater)
        if state["run"]["stopped"] or done >= int(parser.get("max_epochs")):
            logger.info("%s already trained (%d epochs)", run, done)
            return run

    parser.get_parsed_content("initialize")  # set_determinism(seed)
    trainer = parser.get_parsed_content("train#trainer")
    parser.get_parsed_content("train_setup")  # seeded He init, early stopping → trainer
    to_log_file("calibseg.train")  # the StatsHandler's epoch lines: logs/train.log
    world = ddp.get_world_size()
    if ddp.is_main_process():
        _write_resolved(parser, run, job, world)
    if state is not None:
        objects = {
            **parser.get_parsed_content("checkpoint_objects"),
            "trainer": trainer,
            **({"scaler": trainer.scaler} if getattr(trainer, "scaler", None) else {}),
        }
        Checkpoint.load_objects(to_load=objects, checkpoint=state)
        trainer.state.max_epochs = int(parser.get("max_epochs"))  # may differ from the checkpoint's
        logger.info("resuming %s from epoch %d", run, int(state["run"]["epoch"]))
    ddp.barrier()  # every rank has read last.pt before rank 0 may overwrite it
    writer = parser.get_parsed_content("tensorboard_writer")  # None on ranks > 0
    if on_epoch is not None:

        def upload(_: Any) -> None:
            if writer is not None:
                writer.flush()
            on_epoch()

        trainer.add_event_handler(Events.EPOCH_COMPLETED, upload)
    logger.info(
        "training %s: %d train / %d val cases, %d epochs, device %s, world size %d",
        run,
        len(parser.get_parsed_content("train#datalist")),
        len(parser.get_parsed_content("validate#datalist")),
        int(parser.get("max_epochs")),
        parser.get_parsed_content("device"),
        world,
    )
    t0 = time.perf_counter()
    try:
        trainer.run()
    finally:
        parser.get_parsed_content("finalize")  # closes the TensorBoard writer
    ddp.barrier()  # the other ranks return once final.pt is written
    logger.info("trained %s in %.1f s", run, time.perf_counter() - t0)
    return run


def _check_resumable(state: dict, path: str, seed: int, rater: Any) -> int:
    """Epochs done in the checkpoint ``state`` of ``path``; ValueError if it cannot resume
    this run (older format, other seed or rater)."""
    meta = state["run"]
    if meta.get("format") != CHECKPOINT_FORMAT or "trainer" not in state:
        raise ValueError(
            f"{path} was written by an earlier calibseg (checkpoint format {meta.get('format')}, "
            f"now {CHECKPOINT_FORMAT}): its weights serve `calibseg predict --checkpoint`, but "
            "training cannot resume from it; use another --run-name."
        )
    if meta["seed"] != seed or meta.get("rater") != rater:
        raise ValueError(
            f"{path} was trained with seed {meta['seed']} / rater {meta.get('rater')!r}, "
            f"not seed {seed} / rater {rater!r}; use another --run-name."
        )
    return int(meta["epoch"])


def _write_resolved(parser: Any, run: str, job: dict[str, Any], world: int) -> None:
    """``<run>/resolved_config.json``: bundle, hash, run options and the merged config (with
    the evaluated ``steps_per_epoch`` and the bundle's own location)."""
    config = parser.get()
    config = {**config, "bundle_root": job["bundle"]}
    config["steps_per_epoch"] = int(parser.get_parsed_content("steps_per_epoch"))
    resolved: dict[str, Any] = {
        "bundle": os.path.basename(os.path.normpath(job["bundle"])),
        "bundle_hash": bundle_hash(job["bundle"]),
        "run": {
            "seed": parser.get("seed"),
            "rater": parser.get("rater"),
            "debug": job["debug"],
            "device": str(parser.get_parsed_content("device")),
            "data_root": parser.get_parsed_content("data_root"),
        },
        "config": config,
    }
    if world > 1:
        resolved["run"]["world_size"] = world
    text = json.dumps(resolved, sort_keys=True, default=str)
    resolved["config_hash"] = hashlib.sha256(text.encode()).hexdigest()
    storage.write_json(os.path.join(run, "resolved_config.json"), resolved)
