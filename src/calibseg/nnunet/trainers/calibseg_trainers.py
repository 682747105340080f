"""nnU-Net v2 trainers with calibseg's mL1-ACE term, seeding, early stopping and short epochs.

Subclasses of nnU-Net's ``nnUNetTrainer`` (unmodified nnU-Net): the network, plans,
preprocessing, data augmentation, checkpoints and logs are nnU-Net's own.

- ``nnUNetTrainerCalibseg``: nnU-Net's Dice+CE (Dice+BCE for regions) with the run options.
- ``nnUNetTrainerHardL1ACE`` / ``nnUNetTrainerSoftL1ACE``: the same plus
  ``ace_weight × mL1-ACE`` (hard or soft binning, ``num_bins`` bins) at every
  deep-supervision resolution, inside nnU-Net's ``DeepSupervisionWrapper`` (its weights,
  regions and ignore label are kept; ignored voxels are left out of the binning). As in the
  mL1-ACE paper, an (image, class) pair whose target is empty in the patch is left out of the
  ACE mean (``make_ace``'s ``ignore_empty_classes=True``).

Run options (:class:`calibseg.nnunet.options.TrainOptions`) are set with
:meth:`nnUNetTrainerCalibseg.set_options` before ``initialize()`` (the constructor keeps
nnU-Net's signature, which nnU-Net records in its checkpoints): ``seed`` (He initialisation
of the network and data order through Python's, NumPy's and torch's generators; with nnU-Net's background augmentation workers, ``nnUNet_n_proc_DA > 0``,
their augmentation draws are not seeded), ``patience``/``min_delta`` (stop when nnU-Net's
EMA validation pseudo-Dice has not risen by more than ``min_delta`` for ``patience`` epochs;
the final checkpoint is written as after a full run), ``epochs``, ``iterations_per_epoch``
and ``val_iterations_per_epoch``.

This folder holds only this module so that nnU-Net's own tools find the trainers by name
with ``nnUNet_extTrainer`` pointing here (``calibseg nnunet trainer-path``); imports are
absolute for that reason.
"""

from __future__ import annotations

import json
import os

import torch
from monai.utils import set_determinism
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from calibseg.nnunet.loss import ACEPlusLoss, make_ace
from calibseg.nnunet.options import TrainOptions

__all__ = [
    "OPTIONS_FILE",
    "TRAINERS",
    "EarlyStop",
    "epochs_without_improvement",
    "nnUNetTrainerCalibseg",
    "nnUNetTrainerHardL1ACE",
    "nnUNetTrainerSoftL1ACE",
]

OPTIONS_FILE = "calibseg_options.json"


class EarlyStop(Exception):
    """Raised at the end of an epoch when the early-stopping rule fires."""


def epochs_without_improvement(history: list[float], min_delta: float = 0.0) -> int:
    """Epochs since the last improvement of ``history`` (higher is better).

    An epoch improves when its value exceeds the best so far by more than ``min_delta``; the
    first epoch sets the best. NaN never improves. Returns 0 for an empty history.
    """
    best, best_at = None, -1
    for i, v in enumerate(history):
        v = float(v)
        if v != v:  # NaN
            continue
        if best is None or v > best + min_delta:
            best, best_at = v, i
    if not history:
        return 0
    return len(history) - 1 - best_at if best_at >= 0 else len(history)


class nnUNetTrainerCalibseg(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's trainer with calibseg's run options (see the module docstring)."""

    ace_loss: str | None = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.run_options = TrainOptions()
        self.stopped_early = False

    def set_options(self, options: TrainOptions) -> None:
        """Set the run options (before ``initialize()``); None fields keep nnU-Net's values.

        Raises RuntimeError after initialisation.
        """
        if self.was_initialized:
            raise RuntimeError("set_options must be called before the trainer is initialised.")
        self.run_options = options
        if options.epochs is not None:
            self.num_epochs = options.epochs
        if options.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = options.iterations_per_epoch
        if options.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = options.val_iterations_per_epoch

    def options(self) -> dict:
        """The run options as plain values (written to ``calibseg_options.json``)."""
        o = self.run_options
        return {
            "trainer": self.__class__.__name__,
            "ace_loss": self.ace_loss,
            "ace_weight": o.ace_weight if self.ace_loss else 0.0,
            "ace_num_bins": o.num_bins,
            "seed": o.seed,
            "patience": o.patience,
            "min_delta": o.min_delta,
            "epochs": self.num_epochs,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "val_iterations_per_epoch": self.num_val_iterations_per_epoch,
        }

    def initialize(self) -> None:
        """Seed the generators (if a seed is set), then nnU-Net's initialisation (He init)."""
        if not self.was_initialized and self.run_options.seed is not None:
            set_determinism(seed=self.run_options.seed)
        super().initialize()

    def _build_loss(self):
        """nnU-Net's loss, with the ACE term inside its deep-supervision wrapper."""
        loss = super()._build_loss()
        if self.ace_loss is None:
            return loss
        lm = self.label_manager

        def with_ace(inner):
            return ACEPlusLoss(
                inner,
                make_ace(self.ace_loss, self.run_options.num_bins),
                self.run_options.ace_weight,
                regions=lm.has_regions,
                ignore_label=None if lm.has_regions else lm.ignore_label,
                has_ignore_channel=lm.has_regions and lm.ignore_label is not None,
            )

        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = with_ace(loss.loss)
            return loss
        return with_ace(loss)

    def on_train_start(self) -> None:
        """nnU-Net's start of training, then the options file in the fold folder."""
        super().on_train_start()
        if self.local_rank == 0:
            path = os.path.join(self.output_folder, OPTIONS_FILE)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.options(), f, indent=2)
            os.replace(tmp, path)

    def on_epoch_end(self) -> None:
        """nnU-Net's end of epoch, then the early-stopping rule on the EMA pseudo-Dice."""
        super().on_epoch_end()
        o = self.run_options
        if o.patience > 0:
            history = self.logger.get_value("ema_fg_dice", step=None)
            waited = epochs_without_improvement(list(history), o.min_delta)
            if waited >= o.patience:
                self.print_to_log_file(
                    f"Early stopping: no EMA pseudo-Dice gain above {o.min_delta} for "
                    f"{waited} epochs."
                )
                raise EarlyStop

    def run_training(self) -> None:
        """nnU-Net's training loop; an early stop ends it as a finished run."""
        try:
            super().run_training()
        except EarlyStop:
            self.stopped_early = True
            self.on_train_end()


class nnUNetTrainerHardL1ACE(nnUNetTrainerCalibseg):  # noqa: N801
    """Dice+CE + ``ace_weight`` × hard-binned mL1-ACE (classes absent from an image's target
    left out of its mean, as in the paper)."""

    ace_loss = "hardl1ace"


class nnUNetTrainerSoftL1ACE(nnUNetTrainerCalibseg):  # noqa: N801
    """Dice+CE + ``ace_weight`` × soft-binned mL1-ACE (classes absent from an image's target
    left out of its mean, as in the paper)."""

    ace_loss = "softl1ace"


TRAINERS: dict[str, type[nnUNetTrainerCalibseg]] = {
    "dicece": nnUNetTrainerCalibseg,
    "hardl1ace": nnUNetTrainerHardL1ACE,
    "softl1ace": nnUNetTrainerSoftL1ACE,
}
