"""The demo: a small calibration study on synthetic data that runs on a CPU in minutes.

Three bundles differ only by the loss (baseline Dice+CE, + hard mL1-ACE, + soft mL1-ACE);
everything else (data, split, network, schedule, seed) is identical. Each is trained, predicted
and evaluated on the test split, and evaluated again after temperature scaling fitted on its
validation predictions (:mod:`calibseg.evaluate.study`).

The regime is a miniature of the mL1-ACE paper's in the properties measured to matter
(``docs/calibration_study.md``): the network sees **whole volumes** (48×48×32 = 73,728 voxels
per image, so the per-image ACE over 20 bins is estimated from many voxels per bin, as in the
paper's large patches), and under deep supervision the ACE term applies at the **full-resolution
output only** (the coarse heads have 9,216 and 1,152 voxels per image). The three runs of a seed
train in parallel processes with one thread each, so a run's numbers do not depend on how many
cores the machine has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from calibseg import storage

__all__ = ["DemoSettings", "DEMO_LOSSES", "run_demo"]

DEMO_LOSSES: tuple[str, ...] = ("baseline_dice_ce", "hardl1ace_dice_ce", "softl1ace_dice_ce")


@dataclass
class DemoSettings:
    """Sizes of the demo: synthetic data, network, schedule, seeds, parallel runs."""

    n_cases: int = 24
    shape: tuple[int, int, int] = (48, 48, 32)
    roi_size: tuple[int, int, int] = (48, 48, 32)
    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 1, 1, 1)
    split_fractions: tuple[float, float, float] = (0.5, 0.125, 0.375)
    max_epochs: int = 40
    learning_rate: float = 2.0e-3
    val_interval: int = 4
    ace_at: str | int = "full"
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0
    losses: tuple[str, ...] = DEMO_LOSSES
    workers: int | None = 3
    threads_per_run: int | None = 1
    extra_overrides: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """Bundle overrides shared by the demo's losses."""
        return {
            "common#roi_size": list(self.roi_size),
            "common#network_def#init_filters": self.init_filters,
            "common#network_def#blocks_down": list(self.blocks_down),
            "data#split_fractions": list(self.split_fractions),
            "train#max_epochs": self.max_epochs,
            "train#learning_rate": self.learning_rate,
            "train#val_interval": self.val_interval,
            "train#ace_at": self.ace_at,
            **self.extra_overrides,
        }


def run_demo(out: str = "demo_out", settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run (or continue) the demo under ``out``; return :func:`calibseg.evaluate.study.run_study`'s
    result (``frame``, ``runs``, ``bundles``, ``report``, ``seconds``).

    Raises:
        ValueError: ``out`` holds synthetic data of other sizes.
    """
    from calibseg.data.synthetic import generate
    from calibseg.evaluate.study import StudySettings, run_study

    s = settings or DemoSettings()
    data_dir = storage.join(out, "data")
    meta_path = storage.join(data_dir, "dataset.json")
    if not storage.exists(meta_path):
        generate(data_dir, n_cases=s.n_cases, shape=s.shape, seed=s.data_seed)
    meta = storage.read_json(meta_path)
    have = (meta.get("numTraining"), tuple(meta.get("shape", ())), meta.get("seed"))
    if have != (s.n_cases, tuple(s.shape), s.data_seed):
        raise ValueError(
            f"{data_dir} holds other synthetic data ({have[0]} cases of {have[1]}, seed {have[2]}); "
            "use another --out."
        )
    study = StudySettings(
        data="synthetic",
        data_root=data_dir,
        losses=tuple(s.losses),
        seeds=tuple(s.seeds),
        overrides=s.overrides(),
        patience=0,
        threads_per_run=s.threads_per_run,
    )
    workers = s.workers if s.workers and len(s.losses) * len(s.seeds) > 1 else None
    if workers:
        workers = min(workers, len(s.losses) * len(s.seeds))
    return run_study(out, study, workers=workers)
