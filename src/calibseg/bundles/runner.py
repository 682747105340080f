"""Train and predict with a bundle.

Training is a plain epoch loop (so that resuming is exact): SegResNetDS with optional deep
supervision, AdamW with a warm-up cosine schedule stepped per iteration, AMP on CUDA only,
validation every ``val_interval`` epochs with Dice and ECE / ACE / MCE, best-Dice checkpoint,
optional early stopping, TensorBoard and text logs.

Exact resume: every epoch ends with an atomic ``checkpoints/last.pt`` holding model, optimiser,
scheduler, scaler, the torch / numpy / python RNG states, early-stopping state and the epoch.
Shuffling and random augmentation are seeded per epoch from (seed, epoch), so an interrupted
run continued from its last checkpoint gives the same weights as an uninterrupted one.

Started by ``torchrun --nproc-per-node N -m calibseg train …`` (``WORLD_SIZE`` > 1), one model
trains with DistributedDataParallel (gloo on CPU, NCCL on GPU): a ``DistributedSampler`` seeded
with the run seed shards the training set (``batch_size`` is per process), gradients are
averaged, and rank 0 alone validates and writes checkpoints, logs, summary and TensorBoard;
its early-stopping decision is broadcast to the other ranks. Every rank resumes from rank 0's
``last.pt``. Checkpoints hold the unwrapped model's state dict, as in a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from calibseg import storage
from calibseg.bundles import bundle_hash, load_bundle, read_splits, require_bundle
from calibseg.distributed import ddp

__all__ = ["train", "predict", "load_checkpoint", "run_dir"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: RNG states as plain values (weights_only loading)


def run_dir(bundle: str, seed: int = 0, run_name: str | None = None) -> str:
    """The run folder ``<bundle>/<run_name or seed_<seed>>``."""
    return storage.join(str(bundle), run_name or f"seed_{seed}")


def _derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _save_torch(obj: Any, path: str) -> None:
    """Write a checkpoint atomically: serialised in memory, then written through
    :func:`calibseg.storage.write_bytes`, so a full disk raises an OSError naming ``path``
    and its cause (not a serialiser error about stream positions) and leaves no partial file."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getbuffer())


def load_checkpoint(path: str, bundle: str | None = None) -> dict:
    """Load a checkpoint (on CPU); with ``bundle``, check it belongs to that bundle.

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain values
    (dict, list, tuple, str, int, float, bool, None) are accepted, so a crafted pickle cannot
    run code. Raises FileNotFoundError when missing and ValueError when the file needs more
    than that (refused before anything else is done), is not a calibseg checkpoint or was
    written by another bundle.
    """
    import pickle

    import torch

    if not storage.exists(path):
        raise FileNotFoundError(f"no checkpoint {path}; train first with `calibseg train`.")
    with storage.local_path(path) as local:
        try:
            ckpt = torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"refusing to load checkpoint {storage.redact(path)}: it holds objects other "
                f"than tensors and plain values, which could run code when loaded ({first}). "
                "Only checkpoints written by calibseg are accepted."
            ) from None
        except Exception as e:  # a truncated/foreign file
            raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "bundle_hash" not in ckpt:
        raise ValueError(f"{path} is not a calibseg checkpoint.")
    if bundle is not None:
        h = bundle_hash(bundle)
        if ckpt["bundle_hash"] != h:
            raise ValueError(
                f"checkpoint {path} belongs to another bundle (hash {ckpt['bundle_hash'][:8]}, "
                f"this bundle {h[:8]}); use a checkpoint of this bundle or its own bundle."
            )
    return ckpt


@contextmanager
def _bundle_logging(bundle: str, log_dir: str) -> Iterator[None]:
    """Configure logging from the bundle's logging.conf (file: ``<log_dir>/train.log``) for
    the duration of the block; the previous root handlers and level are restored after."""
    os.makedirs(log_dir, exist_ok=True)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "logging.conf")
        with open(p, "wb") as f:
            f.write(storage.read_bytes(storage.join(bundle, "logging.conf")))
        logging.config.fileConfig(
            p,
            defaults={"logfile": os.path.join(log_dir, "train.log").replace("\\", "/")},
            disable_existing_loggers=False,
        )
    try:
        yield
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def _rng_state() -> dict:
    """The torch, numpy and python RNG states as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``): numpy's MT19937 state as a list of 624 ints and its
    position / Gaussian cache, python's ``random`` state as its version, 625 ints and the
    cached Gaussian (float or None)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": [int(v) for v in internal],
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by :func:`_rng_state`."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            np.asarray(n["keys"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _he_init(model: Any, seed: int) -> None:
    """Kaiming-normal (fan-out, ReLU) conv weights and zero biases from a generator seeded ``seed``."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.Conv2d)):
                w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()


def _rater_keys(items: list[dict]) -> list[str]:
    """Keys ``rater_1..rater_K`` for the items' rater labels ([] when they have none)."""
    from calibseg.data import rater_keys

    counts = {len(it.get("raters") or []) for it in items}
    if len(counts) > 1:
        raise ValueError(f"cases have different numbers of rater labels: {sorted(counts)}.")
    return rater_keys(counts.pop()) if counts else []


def _check_rater(rater: Any) -> Any:
    if rater is None or rater in ("mean", "random", "weighted"):
        return rater
    if isinstance(rater, str) and rater.isdigit():
        rater = int(rater)
    if isinstance(rater, bool) or not isinstance(rater, int) or rater < 1:
        raise ValueError(
            f"rater must be None, a rater number >= 1, 'mean', 'random' or 'weighted'; got {rater!r}."
        )
    return rater


def _make_dataset(items: list[dict], transform: Any, cache_rate: float):
    """A MONAI dataset: deterministic transforms cached when ``cache_rate`` > 0."""
    from monai.data import CacheDataset, Dataset

    if cache_rate > 0:
        return CacheDataset(items, transform, cache_rate=cache_rate, num_workers=0, progress=False)
    return Dataset(items, transform)


def _plain(t: Any) -> Any:
    """A plain ``torch.Tensor`` (MONAI MetaTensors slow every op down through __torch_function__)."""
    import torch

    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _one_hot_target(y: Any, num_classes: int) -> Any:
    """[B,1,...] index labels → [B,C,...] one-hot float; [B,C,...] soft labels kept (float)."""
    from monai.networks.utils import one_hot

    y = _plain(y)
    if y.shape[1] == 1:
        return one_hot(y.round().long(), num_classes=num_classes, dim=1).float()
    return y.float()


def _validate(
    model, loader, inferer, dice_metric, device, num_classes: int, num_bins: int
) -> dict[str, float]:
    """Mean Dice (``dice_metric``, a MONAI DiceMetric with reduction "none") and macro
    ECE/ACE/MCE (per case, foreground classes) on ``loader``.

    In a DDP group each rank validates its own cases and the per-case values of all ranks are
    gathered (``all_gather_object``), so every rank returns the same metrics."""
    import torch

    from calibseg.binning import compute_bin_stats

    dice_metric.reset()
    dice_rows: list = []
    cal = {"ece": [], "ace": [], "mce": []}
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x = _plain(batch["image"]).to(device)
            y = _one_hot_target(batch["label"], num_classes).to(device)
            prob = torch.softmax(inferer(x, model).float(), dim=1)
            seg = torch.nn.functional.one_hot(prob.argmax(1), num_classes).movedim(-1, 1).float()
            dice_rows.append(torch.as_tensor(dice_metric(y_pred=seg, y=y)).float().cpu())
            errs = compute_bin_stats(prob, y, num_bins=num_bins).errors()
            for k in cal:
                cal[k].append(errs[k][:, 1:].cpu())
    if ddp.is_distributed():
        # MONAI's aggregate() would all-gather its buffers, failing on ranks without cases:
        # gather the per-case rows (the buffer of a "none" reduction) instead
        mine = {"dice": dice_rows, **cal}
        parts: list = [None] * ddp.get_world_size()
        torch.distributed.all_gather_object(parts, mine)
        return {k: float(torch.cat([t for p in parts for t in p[k]]).nanmean()) for k in mine}
    out = {"dice": float(torch.as_tensor(dice_metric.aggregate()).float().nanmean())}
    out.update({k: float(torch.cat(v).float().nanmean()) for k, v in cal.items()})
    return out


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
) -> str:
    """Train the bundle's network for one seed; return the run folder.

    ``patience`` (validations without a Dice gain) overrides the bundle's
    ``early_stopping_patience``; 0 disables early stopping.

    Reruns continue from ``checkpoints/last.pt`` (a checkpoint of another bundle is refused).
    ``rater``: None (the "label"), k (k-th rater, 1-based), "mean" (soft rater average) or
    "random" (a rater drawn per sample); validation always uses the "label". Writes ``checkpoints/{last,best,final}.pt``,
    ``logs/train.log``, ``logs/tensorboard/``, ``resolved_config.json`` and
    ``training_summary.json`` (history, best Dice and epoch).

    An ``s3://`` bundle trains in a local working folder (under ``$CALIBSEG_CACHE/runs``) that
    first mirrors the remote run's checkpoints and logs (so reruns resume from S3); the run
    folder is uploaded after every epoch and at the end, and the returned run is the URL.
    """
    require_bundle(bundle)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    rater = _check_rater(rater)
    parser = load_bundle(bundle, debug=debug)
    if max_epochs is not None:
        if int(max_epochs) < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
        parser["max_epochs"] = int(max_epochs)
    if patience is not None:
        if isinstance(patience, bool) or int(patience) < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}.")
        parser["early_stopping_patience"] = int(patience)
    run = run_dir(bundle, seed, run_name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if storage.is_remote(run):
            raise ValueError(
                f"distributed training (WORLD_SIZE={os.environ['WORLD_SIZE']}) needs a local "
                f"bundle, not {storage.redact(bundle)}; copy the bundle to a local or shared "
                "folder, or train it with a single process."
            )
        return _train_distributed(bundle, parser, run, seed, rater, debug, he_init, device)
    if not storage.is_remote(run):
        with _bundle_logging(bundle, os.path.join(run, "logs")):
            return _train(bundle, parser, run, seed, rater, debug, he_init, device)
    local_bundle = _stage_bundle(bundle)
    local_run = os.path.join(local_bundle, os.path.basename(run))
    _pull_run(run, local_run)

    def sync() -> None:
        _push_run(local_run, run)

    with _bundle_logging(local_bundle, os.path.join(local_run, "logs")):
        logger.info("run %s works in %s", storage.redact(run), local_run)
        try:
            _train(local_bundle, parser, local_run, seed, rater, debug, he_init, device, sync)
        except BaseException:
            try:  # keep what was written (logs, last checkpoint) next to the bundle
                sync()
            except Exception as e:  # noqa: BLE001 - the training error is the one to report
                logger.warning("could not upload %s after the failure: %s", local_run, e)
            raise
        sync()
    return run


def _train_distributed(
    bundle: str,
    parser: Any,
    run: str,
    seed: int,
    rater: Any,
    debug: bool,
    he_init: bool,
    device: str | None,
) -> str:
    """Join the torchrun process group, train with DDP, leave the group (also on error).

    Only rank 0 configures the bundle's logging (``logs/train.log``); the other ranks log
    warnings and errors to stderr only.
    """
    from contextlib import nullcontext

    owns_group = not ddp.is_distributed()
    # rank 0 alone validates and writes while the others wait at a collective: allow an hour
    ddp.init_from_env(timeout_s=3600.0)
    try:
        main = ddp.is_main_process()
        logs = _bundle_logging(bundle, os.path.join(run, "logs")) if main else nullcontext()
        with logs:
            return _train(bundle, parser, run, seed, rater, debug, he_init, device)
    finally:
        if owns_group:
            ddp.cleanup()


# --------------------------------------------------------------------------- remote runs
#
# A run of an ``s3://`` bundle works in a local folder keyed by the bundle URL
# (``$CALIBSEG_CACHE/runs/<sha256(url)[:16]>/<bundle name>/<run name>``) holding copies of the
# bundle's configs and splits. Before training, the remote run's checkpoints, logs and JSON
# files are mirrored into it (the remote run is the truth: local files it lacks are removed),
# so a rerun resumes from the remote ``last.pt`` on any machine. After every epoch (after the
# checkpoint is written) and at the end, changed files are uploaded with ``storage.push``:
# one atomic PUT per object, unchanged objects skipped.

_PULLED = ("checkpoints", "logs", "resolved_config.json", "training_summary.json")


def _work_root() -> str:
    return os.path.join(
        os.environ.get("CALIBSEG_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "calibseg"),
        "runs",
    )


def _stage_bundle(bundle: str) -> str:
    """Copy the defining files and ``splits.json`` of a remote bundle into its local working
    folder; return that folder (same name, so the bundle hash and run names are unchanged)."""
    from calibseg.bundles import BUNDLE_FILES

    url = str(bundle).rstrip("/")
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    local = os.path.join(_work_root(), key, url.rsplit("/", 1)[-1])
    for rel in (*BUNDLE_FILES, "splits.json"):
        storage.write_bytes(os.path.join(local, rel), storage.read_bytes(storage.join(url, rel)))
    return local


def _is_partial(rel: str) -> bool:
    """Temporary files of an interrupted atomic write (``.<name>.<random>.part<suffix>``)."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".part" in name


def _pull_run(run: str, local_run: str) -> None:
    """Mirror the remote run's checkpoints, logs and JSON files into ``local_run``.

    Every remote key is checked with :func:`calibseg.storage.confined_path` before any local
    file is touched: a key that would land outside ``local_run`` raises
    :class:`calibseg.storage.UnsafePathError`.
    """
    import shutil

    remote = {}
    if storage.exists(run):
        listed = storage.list_files(run)
        for e in listed:
            storage.confined_path(local_run, e["rel"])
        remote = {
            e["rel"]: e
            for e in listed
            if e["rel"].split("/", 1)[0] in _PULLED and not _is_partial(e["rel"])
        }
    for entry in _PULLED:
        p = os.path.join(local_run, entry)
        if os.path.isdir(p):
            for rel in (e["rel"] for e in storage.list_files(p)):
                if f"{entry}/{rel}" not in remote:
                    os.unlink(os.path.join(p, rel))
        elif os.path.isfile(p) and entry not in remote:
            os.unlink(p)
    for entry in _PULLED:
        if entry in remote:
            storage.pull(storage.join(run, entry), os.path.join(local_run, entry))
        elif any(r.startswith(entry + "/") for r in remote):
            storage.pull(storage.join(run, entry), os.path.join(local_run, entry) + "/")
    if not remote and os.path.isdir(local_run):
        shutil.rmtree(local_run)
    if remote:
        logger.info("pulled %d files of %s", len(remote), storage.redact(run))


def _push_run(local_run: str, run: str) -> None:
    """Upload the changed files of ``local_run`` to ``run`` (stale partial files skipped)."""
    for rel in (e["rel"] for e in storage.list_files(local_run)):
        if _is_partial(rel):
            os.unlink(os.path.join(local_run, rel))
    storage.push(local_run, run)


def _train(
    bundle: str,
    parser: Any,
    run: str,
    seed: int,
    rater: Any,
    debug: bool,
    he_init: bool,
    device: str | None,
    on_checkpoint: Callable[[], None] | None = None,
) -> str:
    """The training loop in the local run folder ``run``; ``on_checkpoint()`` is called after
    each epoch's checkpoint and summary are written (remote runs upload there).

    In a DDP process group every rank runs this loop on its shard; rank 0 writes."""
    import numpy as np
    import torch
    from monai.data import DataLoader, list_data_collate
    from monai.utils import set_determinism
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from calibseg.data import get_dataset

    dist_on, main = ddp.is_distributed(), ddp.is_main_process()
    rank, world = ddp.get_rank(), ddp.get_world_size()
    ckpt_dir, log_dir = os.path.join(run, "checkpoints"), os.path.join(run, "logs")
    if main:
        os.makedirs(ckpt_dir, exist_ok=True)
    if dist_on:
        dev = ddp.device()
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    h = bundle_hash(bundle)

    last_path = os.path.join(ckpt_dir, "last.pt")
    state = load_checkpoint(last_path, bundle) if os.path.exists(last_path) else None
    if state is not None and (state["seed"] != seed or state.get("rater") != rater):
        raise ValueError(
            f"{last_path} was trained with seed {state['seed']} / rater {state.get('rater')!r}, "
            f"not seed {seed} / rater {rater!r}; use another --run-name."
        )
    if state is not None and (state["stopped"] or state["epoch"] >= int(parser.get("max_epochs"))):
        logger.info("%s already trained (%d epochs)", run, state["epoch"])
        return run

    cfg = parser.get
    max_ep = int(cfg("max_epochs"))
    spec = get_dataset(cfg("dataset"))
    num_classes = int(cfg("num_classes"))
    splits = read_splits(bundle)
    train_items = splits["training"]
    rater_keys = _rater_keys(train_items) if rater is not None else []
    if rater is not None and not rater_keys:
        raise ValueError(f"rater={rater!r} needs rater labels, but {bundle} has none.")
    val_items = splits["validation"]
    if cfg("debug", False):
        n = int(cfg("debug_max_cases", 4))
        train_items, val_items = train_items[:n], val_items[: max(1, n // 2)]
    if not train_items:
        raise ValueError(f"the training split of {bundle} is empty.")
    roi = tuple(int(r) for r in cfg("roi_size"))
    batch_size = int(cfg("batch_size"))
    # a DistributedSampler pads the split to ceil(n / world) cases per rank
    per_rank = -(-len(train_items) // world)
    steps = max(1, -(-per_rank // batch_size))
    parser["steps_per_epoch"] = steps

    resolved = {
        "bundle": os.path.basename(os.path.normpath(bundle)),
        "bundle_hash": h,
        "run": {"seed": seed, "rater": rater, "debug": debug, "device": str(dev)},
        "config": parser.get(),
    }
    if dist_on:
        resolved["run"]["world_size"] = world
    text = json.dumps(resolved, sort_keys=True, default=str)
    resolved["config_hash"] = hashlib.sha256(text.encode()).hexdigest()
    if main:
        storage.write_json(os.path.join(run, "resolved_config.json"), resolved)

    set_determinism(seed=seed)
    model = parser.get_parsed_content("network").to(dev)
    if he_init and cfg("he_init", True):
        _he_init(model, seed)
    loss_fn = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    scheduler = parser.get_parsed_content("lr_scheduler")
    use_amp = bool(cfg("amp", True)) and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    inferer = parser.get_parsed_content("val_inferer")
    dice_metric = parser.get_parsed_content("dice_metric")
    num_bins = int(cfg("num_bins", 20))
    val_interval = max(1, int(cfg("val_interval", 1)))
    patience = int(cfg("early_stopping_patience", 0))
    min_delta = float(cfg("early_stopping_min_delta", 0.0))

    if rater is not None:
        train_tf = spec.transforms("train", roi, rater_keys=rater_keys, rater=rater)
    else:
        train_tf = spec.transforms("train", roi)
    train_ds = _make_dataset(train_items, train_tf, float(cfg("cache_rate", 1.0)))
    # each rank validates every world-th case (all of them single-process)
    val_ds = _make_dataset(val_items[rank::world], spec.transforms("val", roi), 1.0)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=0)

    start_epoch, best, bad_vals, history, stopped = 0, {"dice": -1.0, "epoch": 0}, 0, [], False
    net = model  # the unwrapped network: validated and saved
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, best = int(state["epoch"]), state["best"]
        bad_vals, history, stopped = state["bad_vals"], state["history"], state["stopped"]
        logger.info("resuming %s from epoch %d", run, start_epoch)
    ddp.barrier()  # every rank has read last.pt before rank 0 may overwrite it
    model = ddp.wrap_model(net)  # DDP broadcasts rank 0's weights; averages gradients
    sampler = ddp.distributed_sampler(train_ds, shuffle=True, seed=seed)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(log_dir, "tensorboard"), purge_step=start_epoch + 1)
    logger.info(
        "training %s: %d train / %d val cases, %d epochs, device %s, world size %d",
        run,
        len(train_items),
        len(val_items),
        max_ep,
        dev,
        world,
    )

    def checkpoint(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "bundle_hash": h,
            "seed": seed,
            "rater": rater,
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_amp else None,
            "rng": _rng_state(),
            "best": best,
            "bad_vals": bad_vals,
            "history": history,
            "stopped": stopped,
        }

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not main,
    )
    t0 = time.perf_counter()
    try:
        with progress:
            task = progress.add_task(
                os.path.basename(run), total=max_ep, completed=start_epoch, info=""
            )
            for epoch in range(start_epoch, max_ep):
                # augmentation differs between ranks (each sees other cases)
                aug_seed = (
                    _derive_seed(seed, epoch, 1, rank) if dist_on else _derive_seed(seed, epoch, 1)
                )
                train_tf.set_random_state(seed=aug_seed)
                if sampler is not None:
                    sampler.set_epoch(epoch)
                    order = {"sampler": sampler}
                else:
                    gen = torch.Generator().manual_seed(_derive_seed(seed, epoch, 2))
                    order = {"shuffle": True, "generator": gen}
                loader = DataLoader(
                    train_ds,
                    batch_size=batch_size,
                    num_workers=int(cfg("num_workers", 0)),
                    collate_fn=list_data_collate,
                    **order,
                )
                model.train()
                losses = []
                for batch in loader:
                    x = _plain(batch["image"]).to(dev)
                    y = _one_hot_target(batch["label"], num_classes).to(dev)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, enabled=use_amp):
                        loss = loss_fn(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                epoch_loss = float(np.mean(losses))
                if dist_on:  # mean over ranks (equal step counts: the sampler pads)
                    t = torch.tensor(epoch_loss / world, dtype=torch.float64, device=dev)
                    torch.distributed.all_reduce(t)
                    epoch_loss = float(t)
                rec: dict[str, Any] = {"epoch": epoch + 1, "loss": epoch_loss}
                validating = (epoch + 1) % val_interval == 0 or epoch + 1 == max_ep
                if validating:
                    rec.update(
                        _validate(net, val_loader, inferer, dice_metric, dev, num_classes, num_bins)
                    )
                if not main:  # rank 0 writes, then tells whether to stop
                    flag = [None]
                    torch.distributed.broadcast_object_list(flag, src=0)
                    if flag[0]:
                        break
                    continue
                writer.add_scalar("train/loss", rec["loss"], epoch + 1)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], epoch + 1)
                if validating:
                    for k in ("dice", "ece", "ace", "mce"):
                        writer.add_scalar(f"val/{k}", rec[k], epoch + 1)
                    if rec["dice"] > best["dice"] + min_delta:
                        best = {"dice": rec["dice"], "epoch": epoch + 1}
                        bad_vals = 0
                        _save_torch(
                            {
                                "format": CHECKPOINT_FORMAT,
                                "bundle_hash": h,
                                "seed": seed,
                                "epoch": epoch + 1,
                                "model": net.state_dict(),
                                "metrics": rec,
                            },
                            os.path.join(ckpt_dir, "best.pt"),
                        )
                    else:
                        bad_vals += 1
                    stopped = patience > 0 and bad_vals >= patience
                history.append(rec)
                logger.info("epoch %s", json.dumps(rec))
                _save_torch(checkpoint(epoch + 1), last_path)
                storage.write_json(
                    os.path.join(run, "training_summary.json"),
                    {
                        "epochs": epoch + 1,
                        "max_epochs": max_ep,
                        "best_dice": best["dice"] if best["dice"] >= 0 else None,
                        "best_epoch": best["epoch"],
                        "early_stopped": stopped,
                        "history": history,
                    },
                )
                info = f"loss {rec['loss']:.3f}" + (
                    f" dice {rec['dice']:.3f} ace {rec['ace']:.3f}" if "dice" in rec else ""
                )
                progress.update(task, advance=1, info=info)
                if on_checkpoint is not None:
                    writer.flush()
                    on_checkpoint()
                if dist_on:
                    torch.distributed.broadcast_object_list([stopped], src=0)
                if stopped:
                    logger.info("early stopping after epoch %d", epoch + 1)
                    break
    finally:
        if writer is not None:
            writer.close()
    if main:
        _save_torch(
            {
                "format": CHECKPOINT_FORMAT,
                "bundle_hash": h,
                "seed": seed,
                "epoch": history[-1]["epoch"] if history else start_epoch,
                "model": net.state_dict(),
            },
            os.path.join(ckpt_dir, "final.pt"),
        )
    ddp.barrier()  # the other ranks return once final.pt is written
    logger.info("trained %s in %.1f s", run, time.perf_counter() - t0)
    return run


def _checkpoint_path(run: str, checkpoint: str) -> str:
    if checkpoint in ("best", "final", "last"):
        return storage.join(run, "checkpoints", f"{checkpoint}.pt")
    return checkpoint


def predict(
    bundle: str,
    seed: int = 0,
    checkpoint: str = "best",
    run_name: str | None = None,
    cases: str | list[dict] = "test",
    float16: bool = False,
) -> str:
    """Predict a split (or given items) with a trained run; return the predictions folder.

    Writes ``<run>/predictions/<case>_prob.nii.gz`` (softmax probabilities [x, y, z, C],
    channel last, on the original image grid with the image's affine; float32, or 16-bit
    integers with a scale slope when ``float16``, since NIfTI has no float16) and
    ``<case>_seg.nii.gz`` (argmax labels, uint8). ``checkpoint``: best | final | last | a path.
    With an ``s3://`` bundle, images are read through the local cache and each prediction is
    uploaded in one atomic request once written.
    """
    import nibabel as nib
    import numpy as np
    import torch
    from monai.transforms import Invertd

    from calibseg.data import get_dataset

    require_bundle(bundle)
    parser = load_bundle(bundle)
    run = run_dir(bundle, seed, run_name)
    ckpt = load_checkpoint(_checkpoint_path(run, checkpoint), bundle)
    if isinstance(cases, str):
        splits = read_splits(bundle)
        if cases not in splits:
            raise ValueError(f"unknown split {cases!r}; choose one of {', '.join(splits)}.")
        items = splits[cases]
    else:
        items = list(cases)
    ids = [str(it["case"]) for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to name prediction files.")
    cfg = parser.get
    spec = get_dataset(cfg("dataset"))
    roi = tuple(int(r) for r in cfg("roi_size"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = parser.get_parsed_content("network")
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    inferer = parser.get_parsed_content("pred_inferer")
    pre = spec.transforms("infer", roi)
    invert = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)
    out_dir = storage.join(run, "predictions")
    storage.makedirs(out_dir)
    for it, case in zip(items, ids, strict=True):
        item = {k: v for k, v in it.items() if k in ("case", "image")}
        data = pre(item)
        with torch.no_grad():
            x = _plain(data["image"])[None].to(dev)
            prob = torch.softmax(inferer(x, model).float(), dim=1)[0].cpu()
        from monai.data import MetaTensor

        img = data["image"]
        data["pred"] = MetaTensor(
            prob, meta=dict(img.meta), applied_operations=list(img.applied_operations)
        )
        p = np.asarray(torch.as_tensor(invert(data)["pred"]), dtype=np.float32)
        image0 = it["image"][0] if isinstance(it["image"], (list, tuple)) else it["image"]
        with storage.local_path(image0) as local:
            ref = nib.load(local)
            shape, affine = ref.shape[:3], ref.affine
        if tuple(p.shape[1:]) != tuple(shape):
            raise RuntimeError(
                f"prediction of {case} has shape {p.shape[1:]} after inversion, image has {shape}."
            )
        p = np.clip(p, 0.0, None)
        s = p.sum(0, keepdims=True)
        p[0][s[0] <= 1e-6] = 1.0  # voxels outside every window (padding): background
        p /= p.sum(0, keepdims=True)
        prob_img = nib.Nifti1Image(np.moveaxis(p, 0, -1), affine)
        if float16:
            prob_img.set_data_dtype(np.uint16)
        seg_img = nib.Nifti1Image(p.argmax(0).astype(np.uint8), affine)
        for suffix, im in (("prob", prob_img), ("seg", seg_img)):
            with storage.local_output(storage.join(out_dir, f"{case}_{suffix}.nii.gz")) as tmp:
                nib.save(im, tmp)
    logger.info("wrote %d predictions to %s", len(items), out_dir)
    return out_dir
