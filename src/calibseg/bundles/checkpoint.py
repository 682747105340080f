"""Checkpoints of a run: one format, one writer, safe loading.

A checkpoint is what MONAI's :class:`~monai.handlers.CheckpointSaver` (Ignite's ``Checkpoint``)
saves from the bundle's ``checkpoint_objects``: ``{"model", "optimizer", "scheduler",
"trainer", "run"}``, each the object's ``state_dict()`` — the engine's epoch and iteration
counts, and :class:`RunState`'s bundle hash, seed, rater, history, best Dice, early-stopping
flag and the torch / numpy / python RNG states, all as tensors and plain values, so
``torch.load(weights_only=True)`` reads every checkpoint. Files are written by
:func:`save_checkpoint` only (serialised in memory, then one atomic
:func:`calibseg.storage.write_bytes`).
"""

from __future__ import annotations

import io
import logging
import pickle
import random
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from calibseg import storage
from calibseg.bundles import bundle_hash
from calibseg.distributed import ddp

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunState",
    "RunCheckpointSaver",
    "checkpoint_path",
    "load_checkpoint",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

# 2: RNG states as plain values (weights_only loading); 3: Ignite's layout — one entry per
# saved object (model, optimizer, scheduler, trainer, run), run metadata under "run"
CHECKPOINT_FORMAT = 3


def rng_state() -> dict:
    """The torch, numpy and python RNG states as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``): numpy's MT19937 state as a list of 624 ints and its
    position / Gaussian cache, python's ``random`` state as its version, 625 ints and the
    cached Gaussian (float or None)."""
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


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
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


def save_checkpoint(obj: Any, path: str) -> None:
    """Write a checkpoint atomically: serialised in memory, then written through
    :func:`calibseg.storage.write_bytes`, so a full disk raises an OSError naming ``path``
    and its cause and leaves no partial file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getbuffer())


def checkpoint_path(run: str, checkpoint: str) -> str:
    """``<run>/checkpoints/<name>.pt`` for best | final | last, else ``checkpoint`` (a path)."""
    if checkpoint in ("best", "final", "last"):
        return storage.join(run, "checkpoints", f"{checkpoint}.pt")
    return checkpoint


def _run_meta(ckpt: dict) -> dict | None:
    """The run metadata of a format-3 checkpoint, or of a format-2 one (top-level keys)."""
    if isinstance(ckpt.get("run"), dict) and "bundle_hash" in ckpt["run"]:
        return ckpt["run"]
    if "bundle_hash" in ckpt:  # format 2: metadata beside the model
        keep = ("format", "bundle_hash", "seed", "rater", "history", "best", "stopped")
        return {k: ckpt[k] for k in keep if k in ckpt} | {"format": ckpt.get("format", 2)}
    return None


def load_checkpoint(path: str, bundle: str | None = None) -> dict:
    """Load a checkpoint (on CPU); with ``bundle``, check it belongs to that bundle.

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain values
    (dict, list, tuple, str, int, float, bool, None) are accepted, so a crafted pickle cannot
    run code. Checkpoints of format 2 (earlier calibseg) are returned in the format-3 layout
    (``model`` and ``run``). Raises FileNotFoundError when missing and ValueError when the
    file needs more than that (refused before anything else is done), is not a calibseg
    checkpoint or was written by another bundle.
    """
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
    meta = _run_meta(ckpt) if isinstance(ckpt, dict) else None
    if meta is None or "model" not in ckpt:
        raise ValueError(f"{path} is not a calibseg checkpoint.")
    if bundle is not None:
        h = bundle_hash(bundle)
        if meta["bundle_hash"] != h:
            raise ValueError(
                f"checkpoint {path} belongs to another bundle (hash {meta['bundle_hash'][:8]}, "
                f"this bundle {h[:8]}); use a checkpoint of this bundle or its own bundle."
            )
    if "run" not in ckpt:
        ckpt = {"model": ckpt["model"], "run": meta}
    return ckpt


def load_weights(network: torch.nn.Module, path: str, bundle_root: str | None = None) -> dict:
    """Load the ``model`` weights of the checkpoint at ``path`` into ``network`` (unwrapped
    from DDP); return the checkpoint. Raises as :func:`load_checkpoint`."""
    ckpt = load_checkpoint(path, bundle_root)
    ddp.unwrap_model(network).load_state_dict(ckpt["model"])
    return ckpt


class RunState:
    """The run's own state in a checkpoint (``"run"``): bundle hash, seed, rater, epochs done,
    per-epoch history, best validation Dice and its epoch, whether early stopping ended the run, and the
    RNG states (restored by :meth:`load_state_dict`).

    Args:
        bundle_root: the bundle folder (its hash is recorded, see
            :func:`calibseg.bundles.bundle_hash`).
        seed: the run seed.
        rater: the training target (None: the label; see ``calibseg train --rater``).
    """

    def __init__(self, bundle_root: str, seed: int = 0, rater: Any = None) -> None:
        self.bundle_root = str(bundle_root)
        self.seed = int(seed)
        self.rater = rater
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"dice": -1.0, "epoch": 0}
        self.stopped = False
        self._hash: str | None = None

    @property
    def bundle_hash(self) -> str:
        if self._hash is None:
            self._hash = bundle_hash(self.bundle_root)
        return self._hash

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "bundle_hash": self.bundle_hash,
            "seed": self.seed,
            "rater": self.rater,
            "epoch": int(self.history[-1]["epoch"]) if self.history else 0,
            "history": [dict(r) for r in self.history],
            "best": dict(self.best),
            "stopped": bool(self.stopped),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take history, best and stopped from ``state`` and restore its RNG states.

        Raises ValueError when ``state`` is of another bundle, seed or rater."""
        if state.get("bundle_hash") != self.bundle_hash:
            raise ValueError("the checkpoint belongs to another bundle.")
        if state.get("seed") != self.seed or state.get("rater") != self.rater:
            raise ValueError(
                f"the checkpoint was trained with seed {state.get('seed')} / rater "
                f"{state.get('rater')!r}, not seed {self.seed} / rater {self.rater!r}."
            )
        self.history = [dict(r) for r in state["history"]]
        self.best = dict(state["best"])
        self.stopped = bool(state["stopped"])
        set_rng_state(state["rng"])


class _StorageSaver(BaseSaveHandler):
    """Ignite save handler: :func:`save_checkpoint` into ``folder`` under a fixed ``filename``
    (rank 0 only); the previous file is replaced atomically, so ``remove`` has nothing to do."""

    def __init__(self, folder: str, filename: str) -> None:
        self.folder, self.filename = folder, filename

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        if ddp.is_main_process():
            save_checkpoint(checkpoint, storage.join(self.folder, self.filename))

    def remove(self, filename: str) -> None:
        return None


class RunCheckpointSaver(CheckpointSaver):
    """MONAI's CheckpointSaver with fixed file names and atomic writes.

    Saves ``save_dict`` and, under ``engine_key``, the state of the engine it is attached to
    (epoch, iteration; a config cannot refer to the trainer from its own handlers) after every
    epoch as ``last_filename``, when the trainer's
    ``key_metric_name`` metric rises as ``key_metric_filename`` (epochs without that metric are
    skipped), and when the run completes (also after early stopping; not after an exception)
    as ``final_filename``. Files go through :func:`save_checkpoint`: atomic, rank 0 only.
    With ``run_state``, the best value it holds (a resumed run) is the one to beat.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        last_filename: str = "last.pt",
        final_filename: str = "final.pt",
        key_metric_name: str | None = None,
        key_metric_filename: str = "best.pt",
        run_state: RunState | None = None,
        engine_key: str | None = "trainer",
    ) -> None:
        save_dict = dict(save_dict)
        super().__init__(
            save_dir,
            save_dict,
            save_final=True,
            final_filename=final_filename,
            save_key_metric=key_metric_name is not None,
            key_metric_name=key_metric_name,
            key_metric_filename=key_metric_filename,
            epoch_level=True,
            save_interval=1,
            n_saved=1,
        )
        self.key_metric_name = key_metric_name
        self.run_state = run_state
        self.engine_key = engine_key
        names = (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, last_filename),
        )
        for ckpt, name in names:
            if ckpt is not None:
                ckpt.save_handler = _StorageSaver(save_dir, name)

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            self.save_dict[self.engine_key] = engine  # the dict the Checkpoints save
        if getattr(engine, "scaler", None) is not None:  # AMP (CUDA)
            self.save_dict["scaler"] = engine.scaler
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self._resume_best)

    def _resume_best(self, engine: Engine) -> None:
        best = self.run_state.best if self.run_state is not None else None
        if self._key_metric_checkpoint is not None and best and best["epoch"] > 0:
            name = self._key_metric_checkpoint.save_handler.filename
            self._key_metric_checkpoint.load_state_dict({"_saved": [(best["dice"], name)]})

    def metrics_completed(self, engine: Engine) -> None:
        if self.key_metric_name in engine.state.metrics:
            super().metrics_completed(engine)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        raise e
