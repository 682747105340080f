"""Run options of calibseg's nnU-Net trainers (importable without nnU-Net)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """What a calibseg trainer adds to an nnU-Net run; None keeps nnU-Net's value.

    Attributes:
        seed: seeds He initialisation and the data order (None: unseeded).
        patience: stop after this many epochs without an EMA pseudo-Dice gain (0: off).
        min_delta: smallest EMA pseudo-Dice gain that counts as one.
        ace_weight: weight of the mL1-ACE term (ACE trainers only).
        num_bins: bins of the mL1-ACE term.
        epochs: epochs (nnU-Net: 1000).
        iterations_per_epoch: training iterations per epoch (nnU-Net: 250).
        val_iterations_per_epoch: validation iterations per epoch (nnU-Net: 50).

    Raises ValueError for out-of-range values.
    """

    seed: int | None = None
    patience: int = 0
    min_delta: float = 0.0
    ace_weight: float = 1.0
    num_bins: int = 20
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        if self.patience < 0 or self.min_delta < 0:
            raise ValueError(
                f"patience and min_delta must be >= 0, got {self.patience}, {self.min_delta}."
            )
        if not self.ace_weight >= 0:
            raise ValueError(f"ace_weight must be >= 0, got {self.ace_weight}.")
        if self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {self.num_bins}.")
        for name in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}.")
