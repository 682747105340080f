"""nnU-Net losses inside `calibseg study`, through the installed console script (CPU, tiny): a
bundle loss, nnunet_dicece and nnunet_hardl1ace on the same cases and splits; rows per test
case, temperature fitted, predictions on the original image grid, rerun a no-op."""

import json
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytest.importorskip(
    "nnunetv2", reason="nnU-Net extra not installed (make nnunet or pip install 'calibseg[nnunet]')"
)

from calibseg.data.synthetic import generate  # noqa: E402

pytestmark = pytest.mark.slow

EXE = os.path.join(os.path.dirname(sys.executable), "calibseg")
NN_LOSSES = ("nnunet_dicece", "nnunet_hardl1ace")
LOSSES = ("baseline_dice_ce", *NN_LOSSES)
SHAPE = (20, 18, 16)  # non-cubic: a transposed prediction cannot match the grid
SPACING = (1.2, 1.0, 2.0)
DATASET = "Dataset001_CalibsegStudy"
TRAINERS = {"nnunet_dicece": "nnUNetTrainerCalibseg", "nnunet_hardl1ace": "nnUNetTrainerHardL1ACE"}


def _study(root, env, overrides):
    """`calibseg study` through the console script; returns (result, seconds)."""
    args = [
        EXE,
        "study",
        "--out",
        str(root / "out"),
        "--data-root",
        str(root / "data"),
        "--losses",
        ",".join(LOSSES),
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--nnunet-iterations",
        "1",
        "--nnunet-val-iterations",
        "1",
        "--patience",
        "0",
        "--set",
        "data#split_fractions=[0.5, 0.25, 0.25]",
    ]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    t0 = time.perf_counter()
    res = subprocess.run(args, env=env, cwd=root, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res, time.perf_counter() - t0


def _files(folder) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (ns)."""
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_overrides):
    root = tmp_path_factory.mktemp("nnstudy")
    generate(str(root / "data"), n_cases=8, n_raters=2, shape=SHAPE, seed=0, spacing=SPACING)
    elsewhere = {k: root / "elsewhere" / k for k in ("raw", "pre", "results")}
    for p in elsewhere.values():
        p.mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        # the user's nnU-Net folders: a study must not touch them
        nnUNet_raw=str(elsewhere["raw"]),
        nnUNet_preprocessed=str(elsewhere["pre"]),
        nnUNet_results=str(elsewhere["results"]),
        nnUNet_n_proc_DA="0",
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
        OMP_NUM_THREADS="2",
    )
    res, seconds = _study(root, env, tiny_overrides)
    out = root / "out"
    bundle = next((out / "bundles").iterdir())
    splits = json.loads((bundle / "splits.json").read_text())
    return {
        "root": root,
        "out": out,
        "env": env,
        "stdout": res.stdout,
        "seconds": seconds,
        "splits": {k: [it["case"] for it in v] for k, v in splits.items()},
        "elsewhere": elsewhere,
        "overrides": tiny_overrides,
    }


def test_rows_for_every_test_case_and_nnunet_loss(study):
    frame = pd.read_csv(study["out"] / "study.csv", dtype={"case": str})
    frame["case"] = frame["case"].fillna("")  # dataset-level (micro) rows have no case
    test_cases = sorted(study["splits"]["test"])
    assert len(test_cases) == 2
    assert list(dict.fromkeys(frame["loss"])) == list(LOSSES)
    for loss in LOSSES:
        for calib in ("none", "temperature"):
            rows = frame[(frame.loss == loss) & (frame.calibration == calib) & (frame.seed == 0)]
            per_case = rows[rows.case != ""]
            assert sorted(set(per_case.case)) == test_cases, (loss, calib)
            for metric in ("dice", "ece"):
                vals = per_case[per_case.metric == metric].value.to_numpy(dtype=float)
                assert len(vals) == len(test_cases) and np.isfinite(vals).all(), (loss, metric)
                assert ((vals >= 0) & (vals <= 1)).all()
            assert set(rows[rows.case == ""].metric) == {"micro_ece", "micro_ace", "micro_mce"}
    # the nnU-Net rows' Dice recomputed by hand from the written segmentation and the label
    # (mean over the foreground classes of 2|A∩B|/(|A|+|B|); both empty → 1)
    for loss in NN_LOSSES:
        for case in test_cases:
            seg = np.asarray(
                nib.load(
                    study["out"]
                    / "nnunet"
                    / "runs"
                    / loss
                    / "seed_0"
                    / "predictions"
                    / f"{case}_seg.nii.gz"
                ).dataobj
            )
            truth = np.asarray(
                nib.load(study["root"] / "data" / "labelsTr" / f"{case}.nii.gz").dataobj
            )
            dices = []
            for c in (1, 2, 3):
                a, b = seg == c, np.rint(truth) == c
                total = a.sum() + b.sum()
                dices.append(1.0 if total == 0 else 2 * (a & b).sum() / total)
            got = frame[
                (frame.loss == loss)
                & (frame.calibration == "none")
                & (frame.case == case)
                & (frame.metric == "dice")
            ].value
            assert got.iloc[0] == pytest.approx(np.mean(dices), abs=1e-6)


def test_same_split_as_the_bundles_and_self_contained(study):
    out, splits = study["out"], study["splits"]
    pre = out / "nnunet" / "preprocessed" / DATASET
    fold0 = json.loads((pre / "splits_final.json").read_text())
    assert fold0 == [{"train": splits["training"], "val": splits["validation"]}]
    raw = out / "nnunet" / "raw" / DATASET
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == sorted(
        f"{c}_0000.nii.gz" for c in splits["test"]
    )
    assert len(list((raw / "labelsTr").iterdir())) == len(splits["training"]) + len(
        splits["validation"]
    )
    for loss in NN_LOSSES:
        fold = (
            out
            / "nnunet"
            / "results"
            / "seed_0"
            / DATASET
            / (f"{TRAINERS[loss]}__nnUNetPlans__3d_fullres")
            / "fold_0"
        )
        opts = json.loads((fold / "calibseg_options.json").read_text())
        assert (opts["seed"], opts["epochs"], opts["iterations_per_epoch"]) == (0, 2, 1)
        assert opts["val_iterations_per_epoch"] == 1 and opts["patience"] == 0
        log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        n_train, n_val = len(splits["training"]), len(splits["validation"])
        assert f"This split has {n_train} training and {n_val} validation cases." in log
    # nothing went to the user's nnU-Net folders
    assert all(not any(p.iterdir()) for p in study["elsewhere"].values())


def test_predictions_on_the_original_grid(study):
    """Every nnU-Net run's validation and test predictions: channel-last probabilities on the
    image's grid (shape, affine), summing to 1, whose argmax is the segmentation nnU-Net itself
    wrote on the original grid."""
    for loss in NN_LOSSES:
        run = study["out"] / "nnunet" / "runs" / loss / "seed_0"
        for case in study["splits"]["validation"] + study["splits"]["test"]:
            image = nib.load(study["root"] / "data" / "imagesTr" / f"{case}.nii.gz")
            assert image.shape == SHAPE
            prob = nib.load(run / "predictions" / f"{case}_prob.nii.gz")
            assert prob.shape == (*SHAPE, 4)
            np.testing.assert_allclose(prob.affine, image.affine, atol=1e-5)
            p = np.asarray(prob.dataobj)
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=5e-3)
            nn_seg = np.asarray(nib.load(run / "nnunet_predictions" / f"{case}.nii.gz").dataobj)
            np.testing.assert_array_equal(p.argmax(-1), nn_seg)
            seg = nib.load(run / "predictions" / f"{case}_seg.nii.gz")
            np.testing.assert_array_equal(np.asarray(seg.dataobj), nn_seg)


def test_temperature_fitted_and_report(study):
    meta = json.loads((study["out"] / "study.json").read_text())
    runs = {r["loss"]: r for r in meta["runs"]}
    assert set(runs) == set(LOSSES)
    for loss in NN_LOSSES:
        fit = runs[loss]["temperature"]
        assert fit["val_voxels"] == len(study["splits"]["validation"]) * int(np.prod(SHAPE))
        assert fit["val_nll_after"] <= fit["val_nll_before"] + 1e-9
        t_file = study["out"] / "nnunet" / "runs" / loss / "seed_0_temperature" / "temperature.json"
        assert json.loads(t_file.read_text())["temperature"] == fit["temperature"]
        assert runs[loss]["epochs"] == 2 and len(runs[loss]["history"]) == 2
        assert runs[loss]["kind"] == "nnunet"
    tests = pd.read_csv(study["out"] / "tests.csv")
    ref = dict(zip(tests.loss + "/" + tests.calibration, tests.reference, strict=False))
    assert ref["nnunet_hardl1ace/none"] == "nnunet_dicece"
    assert ref["nnunet_hardl1ace/temperature"] == "nnunet_dicece"
    assert ref["nnunet_dicece/none"] == "baseline_dice_ce"
    assert ref["baseline_dice_ce/temperature"] == "baseline_dice_ce"
    html = (study["out"] / "report.html").read_text()
    assert "id='nnunet-note'" in html and "more than the loss" in html


def test_rerun_is_a_no_op(study, monkeypatch):
    """The same study again (in this process, the settings the command built): nothing is
    trained or predicted, no run file is rewritten, the table is the same."""
    from calibseg.bundles import runner
    from calibseg.evaluate.study import StudySettings, run_study
    from calibseg.nnunet import study as nn_study
    from calibseg.nnunet.options import TrainOptions

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or predicted again")

    for module, name in (
        (runner, "train"),
        (runner, "predict"),
        (nn_study, "train"),
        (nn_study, "predict"),
        (nn_study, "plan_and_preprocess"),
    ):
        monkeypatch.setattr(module, name, refuse)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, study["env"][key])
    settings = StudySettings(
        data_root=str(study["root"] / "data"),
        losses=LOSSES,
        seeds=(0,),
        overrides={**study["overrides"], "data#split_fractions": [0.5, 0.25, 0.25]},
        patience=0,
        nnunet_options=TrainOptions(epochs=2, iterations_per_epoch=1, val_iterations_per_epoch=1),
    )
    before = _files(study["out"])
    frame = pd.read_csv(study["out"] / "study.csv")
    t0 = time.perf_counter()
    run_study(str(study["out"]), settings, progress=False)
    seconds = time.perf_counter() - t0
    after = _files(study["out"])
    # every training, prediction, evaluation and marker file is untouched; only the tables and
    # the report are written again
    rewritten = {"study.csv", "study.json", "report.html", "summary.csv", "tests.csv"}
    changed = [p for p in before if after.get(p) != before[p]]
    assert {os.path.basename(p) for p in changed} <= rewritten, changed
    assert set(after) == set(before)
    pd.testing.assert_frame_equal(pd.read_csv(study["out"] / "study.csv"), frame)
    print(f"study through the console script: {study['seconds']:.0f} s, rerun: {seconds:.0f} s")
