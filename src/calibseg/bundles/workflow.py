"""Pieces of the bundle workflows that MONAI does not ship (used by the templates' configs).

- :class:`PrepareOneHot`: the engines' ``prepare_batch`` — plain image tensors and one-hot
  float targets (index labels converted, soft rater averages kept).
- :class:`EpochSeeder`: seeds augmentation and shuffling per epoch from (seed, epoch), so a
  resumed run repeats an uninterrupted one exactly.
- :class:`ValidationEvery`: MONAI's ValidationHandler that also validates the last epoch.
- :class:`RunRecorder`: the run's record — per-epoch loss and validation metrics in the
  history, ``training_summary.json``, the ``epoch {…}`` log line, the best Dice and the
  early-stopping flag (kept in :class:`~calibseg.bundles.checkpoint.RunState`).
- :class:`Probabilitiesd`: inverted probabilities made a distribution again, files named by case.
- :class:`LoadWeights`: loads checkpoint weights (``torch.load(weights_only=True)``) at start.
- :func:`he_init`, :func:`train_transforms`, :func:`metric_score`, :func:`derive_seed`,
  :func:`write_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.data.utils import set_rnd
from monai.engines import PrepareBatch
from monai.handlers import ValidationHandler
from monai.networks.utils import one_hot
from monai.transforms import MapTransform

from calibseg import storage
from calibseg.bundles.checkpoint import RunState, load_weights
from calibseg.data import get_dataset, rater_keys
from calibseg.distributed import ddp

__all__ = [
    "EpochSeeder",
    "LoadWeights",
    "PrepareOneHot",
    "Probabilitiesd",
    "RunRecorder",
    "ScaledNiftiWriter",
    "ValidationEvery",
    "check_rater",
    "derive_seed",
    "he_init",
    "write_metrics",
    "metric_score",
    "train_transforms",
]

logger = logging.getLogger("calibseg.bundles.runner")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _plain(t: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI MetaTensors slow every op down through __torch_function__)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


class PrepareOneHot(PrepareBatch):
    """``prepare_batch`` of the trainer and the validator: ``(image, target)`` as plain tensors
    on ``device``; ``[B, 1, …]`` index labels become ``[B, C, …]`` one-hot floats, ``[B, C, …]``
    soft labels (rater averages) are kept as floats.

    Args:
        num_classes: C, the network's output channels.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = _plain(batchdata["image"]).to(device=device, non_blocking=non_blocking)
        y = _plain(batchdata["label"])
        if y.shape[1] == 1:
            y = one_hot(y.round().long(), num_classes=self.num_classes, dim=1)
        return x, y.float().to(device=device, non_blocking=non_blocking)


class EpochSeeder:
    """Seed shuffling and augmentation at the start of every epoch from (seed, epoch).

    Single-process: the DataLoader's generator gets ``derive_seed(seed, epoch, 2)`` and the
    dataset's random transforms a seed drawn from it, as ``monai.data.DataLoader`` does when it
    is built (``num_workers=0``) — the same streams as one loader built per epoch. Under DDP
    (the sampler shuffles) each rank's transforms get ``derive_seed(seed, epoch, 1, rank)``.

    Args:
        seed: the run seed.
        dataset: the training dataset (its random transforms are seeded).
        generator: the ``torch.Generator`` of the training DataLoader.
    """

    def __init__(self, seed: int, dataset: Any, generator: torch.Generator) -> None:
        self.seed, self.dataset, self.generator = int(seed), dataset, generator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch - 1
        if ddp.is_distributed():
            set_rnd(self.dataset, derive_seed(self.seed, epoch, 1, ddp.get_rank()))
        else:
            first = derive_seed(self.seed, epoch, 2)
            self.generator.manual_seed(first)
            drawn = torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            set_rnd(self.dataset, int(drawn.item()))
            self.generator.manual_seed(first)
        # a fresh iterator: the previous epoch's one would draw from the generator when it
        # finds its end (a sampler ending on a full batch is exhausted one call later)
        engine.set_data(engine.state.dataloader)


class ValidationEvery(ValidationHandler):
    """MONAI's epoch-level :class:`~monai.handlers.ValidationHandler`, run every ``interval``
    epochs and after the last epoch (so every run has a validated final epoch and a best
    checkpoint, even when ``max_epochs`` is not a multiple of ``interval``)."""

    def attach(self, engine: Engine) -> None:
        def due(_: Engine, epoch: int) -> bool:
            return epoch % self.interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)


# validation metrics recorded per epoch: history key → evaluator metric
_VAL_KEYS = {
    "dice": "val_mean_dice",
    **{k: f"val_{k}_macro" for k in ("ece", "ace", "mce")},
    **{f"{k}_micro": f"val_{k}_micro" for k in ("ece", "ace", "mce")},
}
BEST_KEY = "best_val_mean_dice"


class RunRecorder:
    """The run's record, after each epoch (attach after the ValidationHandler).

    Appends ``{"epoch", "loss", and after a validation "dice", "ece", "ace", "mce" (macro over
    cases, foreground classes), "ece_micro", "ace_micro", "mce_micro"}`` to
    ``run_state.history``, logs it as ``epoch {json}``, copies the validation metrics into the
    trainer's metrics (with ``best_val_mean_dice``, the best Dice so far — better means more
    than ``min_delta`` above it), sets ``run_state.stopped`` when early stopping ended the run,
    and writes ``<run_dir>/training_summary.json`` (rank 0).
    """

    def __init__(
        self,
        run_state: RunState,
        run_dir: str,
        validator: Engine,
        max_epochs: int | None = None,
        min_delta: float = 0.0,
    ) -> None:
        self.run_state, self.run_dir, self.validator = run_state, str(run_dir), validator
        self.max_epochs, self.min_delta = max_epochs, float(min_delta)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = self.run_state
        epoch = int(engine.state.epoch)
        rec: dict[str, Any] = {"epoch": epoch, "loss": float(engine.state.metrics["train_loss"])}
        vm = self.validator.state.metrics
        if self.validator.state.epoch == epoch and "val_mean_dice" in vm:
            rec.update({k: float(vm[m]) for k, m in _VAL_KEYS.items() if m in vm})
            engine.state.metrics.update({m: vm[m] for m in _VAL_KEYS.values() if m in vm})
            if rec["dice"] > state.best["dice"] + self.min_delta:
                state.best = {"dice": rec["dice"], "epoch": epoch}
            engine.state.metrics[BEST_KEY] = state.best["dice"]
        state.stopped = bool(engine.should_terminate)
        state.history.append(rec)
        logger.info("epoch %s", json.dumps(rec))
        if state.stopped:
            logger.info("early stopping after epoch %d", epoch)
        if ddp.is_main_process():
            best = state.best["dice"]
            storage.write_json(
                storage.join(self.run_dir, "training_summary.json"),
                {
                    "epochs": epoch,
                    "max_epochs": int(self.max_epochs or engine.state.max_epochs),
                    "best_dice": best if best >= 0 else None,
                    "best_epoch": state.best["epoch"],
                    "early_stopped": state.stopped,
                    "history": state.history,
                },
            )


def he_init(model: torch.nn.Module, seed: int) -> None:
    """Kaiming-normal (fan-out, ReLU) conv weights and zero biases from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in ddp.unwrap_model(model).modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.Conv2d)):
                w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()


def check_rater(rater: Any) -> Any:
    """``rater`` validated: None, a rater number >= 1 (int or digits), "mean", "random" or
    "weighted". Raises ValueError otherwise."""
    if rater is None or rater in ("mean", "random", "weighted"):
        return rater
    if isinstance(rater, str) and rater.isdigit():
        rater = int(rater)
    if isinstance(rater, bool) or not isinstance(rater, int) or rater < 1:
        raise ValueError(
            f"rater must be None, a rater number >= 1, 'mean', 'random' or 'weighted'; got {rater!r}."
        )
    return rater


def train_transforms(dataset: str, roi_size: Sequence[int], items: list[dict], rater: Any = None):
    """The training transforms of ``dataset`` (see :meth:`calibseg.data.DatasetSpec.transforms`);
    with ``rater``, the target is that rater's label (or their mean, a random one, …).

    Raises ValueError for a bad ``rater``, for items with different numbers of rater labels,
    or when ``rater`` is given and the items have none."""
    rater = check_rater(rater)
    roi = tuple(int(r) for r in roi_size)
    spec = get_dataset(dataset)
    if rater is None:
        return spec.transforms("train", roi)
    counts = {len(it.get("raters") or []) for it in items}
    if len(counts) > 1:
        raise ValueError(f"cases have different numbers of rater labels: {sorted(counts)}.")
    keys = rater_keys(counts.pop()) if counts else []
    if not keys:
        raise ValueError(f"rater={rater!r} needs rater labels, but the {dataset} cases have none.")
    return spec.transforms("train", roi, rater_keys=keys, rater=rater)


def metric_score(name: str) -> Callable[[Engine], float]:
    """``engine → engine.state.metrics[name]`` (a score function for early stopping)."""

    def score(engine: Engine) -> float:
        return float(engine.state.metrics[name])

    return score


def write_metrics(engine: Engine, path: str) -> dict[str, float]:
    """Write the scalar metrics of a finished engine run to ``path`` (JSON, atomic), log and
    return them."""
    out = {
        k: float(v)
        for k, v in engine.state.metrics.items()
        if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
    }
    logger.info("metrics %s", json.dumps(out))
    storage.write_json(path, out)
    return out


class Probabilitiesd(MapTransform):
    """Probabilities ``[C, …]`` inverted to the original grid made a distribution again:
    negatives (interpolation) clipped, voxels outside every window (padding, sum ~0) given to
    the background, each voxel normalised to sum 1. With ``case_key``, the output's file name
    (``filename_or_obj``) becomes the case id, so SaveImaged writes ``<case>_<postfix>``."""

    def __init__(self, keys: KeysCollection, case_key: str | None = "case") -> None:
        super().__init__(keys)
        self.case_key = case_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            p = d[key]
            t = _plain(p).float().clamp_min(0.0)
            t[0][t.sum(0) <= 1e-6] = 1.0
            t = t / t.sum(0, keepdim=True)
            meta = dict(getattr(p, "meta", {}))
            if self.case_key and self.case_key in d:
                meta["filename_or_obj"] = str(d[self.case_key])
            d[key] = MetaTensor(t, meta=meta)
        return d


class ScaledNiftiWriter(NibabelWriter):
    """MONAI's NIfTI writer, but an integer ``output_dtype`` stores the float data through
    NIfTI's scale slope / intercept (chosen by nibabel) instead of casting it — 16-bit
    probabilities read back within 1e-4 (1/65535 per step) rather than as 0 or 1."""

    @classmethod
    def create_backend_obj(cls, data_array: Any, affine: Any = None, dtype: Any = None, **kwargs):
        integer = dtype is not None and np.issubdtype(np.dtype(dtype), np.integer)
        img = super().create_backend_obj(data_array, affine, None if integer else dtype, **kwargs)
        if integer:
            img.set_data_dtype(np.dtype(dtype))
        return img


class LoadWeights:
    """Load the ``model`` weights of a checkpoint into ``network`` when the engine starts
    (``torch.load(weights_only=True)``; a checkpoint of another bundle is refused)."""

    def __init__(self, network: torch.nn.Module, path: str, bundle_root: str | None = None):
        self.network, self.path, self.bundle_root = network, str(path), bundle_root

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_weights(self.network, self.path, self.bundle_root)
