"""The study behind docs/calibration_study.md: 3 seeds × 200 epochs on whole synthetic volumes.

Baseline, hard and soft mL1-ACE (and soft with the bin split held fixed in the backward pass),
ACE on the full-resolution output only, one thread per run, each model also temperature-scaled.
Writes ``<out>/study/`` (the soft fixed-split runs are a second study whose rows are appended).

Usage: python experiments/whole_volume_study.py OUT [--workers 3] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse

import pandas as pd

from calibseg.evaluate.demo import DemoSettings
from calibseg.evaluate.study import StudySettings, run_study
from calibseg.evaluate.study_report import write_report

FIXED = {"loss#loss_def#ace_params#membership_grad": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    seeds = tuple(int(s) for s in a.seeds.split(","))
    demo = DemoSettings(max_epochs=200, val_interval=5)
    from calibseg.data.synthetic import generate

    data = f"{a.out}/data"
    generate(data, n_cases=demo.n_cases, shape=demo.shape, seed=demo.data_seed)
    common = dict(data_root=data, seeds=seeds, patience=0, threads_per_run=1)
    main_study = run_study(
        f"{a.out}/study",
        StudySettings(overrides=demo.overrides(), **common),
        workers=a.workers,
        report=False,
    )
    fixed = run_study(
        f"{a.out}/fixed_split",
        StudySettings(
            losses=("softl1ace_dice_ce",), overrides={**demo.overrides(), **FIXED}, **common
        ),
        workers=a.workers,
        report=False,
    )
    label = "softl1ace_dice_ce (fixed split)"
    frame = pd.concat([main_study["frame"], fixed["frame"].assign(loss=label)])
    runs = main_study["runs"] + [{**r, "loss": label} for r in fixed["runs"]]
    frame.to_csv(f"{a.out}/study/study_all.csv", index=False)
    print(write_report(f"{a.out}/study", frame, runs, StudySettings(data="synthetic")))


if __name__ == "__main__":
    main()
