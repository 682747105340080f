"""End to end on unmodified nnU-Net (CPU, tiny): convert → plan/preprocess → 2 members →
predict with probabilities → ensemble combine → metrics; the .npz axis order is proved on
probabilities nnU-Net itself wrote."""

import itertools
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip(
    "nnunetv2", reason="nnU-Net extra not installed (make nnunet or pip install 'calibseg[nnunet]')"
)

from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO  # noqa: E402

from calibseg.data.synthetic import generate  # noqa: E402
from calibseg.ensemble.io import read_probabilities  # noqa: E402
from calibseg.nnunet import trainer_path  # noqa: E402
from calibseg.nnunet.options import TrainOptions  # noqa: E402
from calibseg.nnunet.runner import build_trainer, load_checkpoint, nnunet_env, train  # noqa: E402

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
SHAPE = (32, 28, 20)  # non-cubic: a wrong transpose changes the shape
# content moved a quarter of each size towards one corner: the organ (near the centre in the
# generator) becomes a structure that every flip moves away from itself
SHIFT = (8, 7, 5)
# seed whose 8 cases all show the organ brighter than the background at this size
SEED = 4
TEST_CASES = ["synth_006", "synth_007"]
MEMBERS = ("rater1_seed7", "rater2_seed7")
ORGAN = 1


def _affine() -> np.ndarray:
    """Rotation about z by 30°, anisotropic voxels (1, 1, 2) mm, an offset."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 1.0, 2.0])
    aff[:3, 3] = [-12.5, 7.0, 31.0]
    return aff


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def _run(args, env, cwd):
    res = subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    synth = root / "synth"
    generate(str(synth), n_cases=8, n_raters=2, shape=SHAPE, seed=SEED)
    aff = _affine()
    for f in list((synth / "imagesTr").iterdir()) + list((synth / "labelsTr").iterdir()):
        img = nib.load(f)
        data = np.roll(np.asarray(img.dataobj), SHIFT, axis=(0, 1, 2))
        new = nib.Nifti1Image(data, aff)
        new.set_qform(aff, code=1)
        new.set_sform(aff, code=1)
        nib.save(new, f)
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "pre"),
        nnUNet_results=str(root / "results"),
        nnUNet_n_proc_DA="0",
        nnUNet_def_n_proc="1",
        nnUNet_compile="false",
        OMP_NUM_THREADS="2",
    )
    _run(
        [
            "calibseg",
            "nnunet",
            "convert",
            str(synth),
            "--id",
            "901",
            "--name",
            "Tiny",
            "--test-cases",
            "2",
            "--processes",
            "1",
            "--no-majority",
        ],
        env,
        root,
    )
    _run(
        [
            "calibseg",
            "nnunet",
            "ensemble",
            "train",
            "ens",
            "--id",
            "901",
            "--raters",
            "1,2",
            "--seeds",
            "7",
            "--loss",
            "hardl1ace",
            "--epochs",
            "2",
            "--iterations",
            "5",
            "--val-iterations",
            "1",
            "--no-validate",
        ],
        env,
        root,
    )
    images = root / "raw" / "Dataset901_TinyRater1" / "imagesTs"
    _run(["calibseg", "nnunet", "predict", "ens", "--input", str(images)], env, root)
    _run(
        ["calibseg", "ensemble", "combine", "--bundle", "ens", "--out", "ens/ensembles/global"],
        env,
        root,
    )
    _run(
        ["calibseg", "ensemble", "combine", "--bundle", "ens", "--strategy", "per-rater"], env, root
    )
    _run(
        [
            "calibseg",
            "metrics",
            "compute",
            "--pred",
            "ens/ensembles/global",
            "--raters",
            str(synth / "dataset.json"),
            "--out",
            "metrics.csv",
        ],
        env,
        root,
    )
    return {"root": root, "synth": synth, "env": env, "images": images}


def test_members_are_normal_nnunet_results_folders(study):
    ens = study["root"] / "ens"
    assert sorted(p.name for p in ens.iterdir() if not p.name.startswith(".")) == [
        "ensembles",
        *MEMBERS,
    ]
    for k in (1, 2):
        model = (
            ens
            / f"rater{k}_seed7"
            / f"Dataset90{k}_TinyRater{k}"
            / ("nnUNetTrainerHardL1ACE__nnUNetPlans__3d_fullres")
        )
        for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            assert (model / f).is_file()
        fold = model / "fold_0"
        ck = load_checkpoint(str(fold / "checkpoint_final.pth"))
        assert ck["trainer_name"] == "nnUNetTrainerHardL1ACE" and ck["current_epoch"] == 2
        opts = json.loads((fold / "calibseg_options.json").read_text())
        assert opts["seed"] == 7 and opts["ace_loss"] == "hardl1ace"
        assert opts["iterations_per_epoch"] == 5
        written = set(os.listdir(ens / f"rater{k}_seed7" / "predictions"))
        assert {f"{c}{ext}" for c in TEST_CASES for ext in (".nii.gz", ".npz")} <= written


def test_npz_probabilities_land_on_the_original_grid(study):
    """Axis order proved on nnU-Net's own output: the organ probability of every member
    overlaps the (shifted, asymmetric) organ on the original NIfTI grid, and far less under
    any flip; a transpose cannot even match the non-cubic grid."""
    for member in MEMBERS:
        pred = study["root"] / "ens" / member / "predictions"
        for case in TEST_CASES:
            original = nib.load(study["images"] / f"{case}_0000.nii.gz")
            assert original.shape == SHAPE
            # nnU-Net's own reading of the image: [1, z, y, x] = nibabel's [x, y, z] transposed
            nn_img, _ = SimpleITKIO().read_images([str(study["images"] / f"{case}_0000.nii.gz")])
            np.testing.assert_allclose(
                nn_img[0],
                np.asarray(original.dataobj, dtype=np.float32).transpose(2, 1, 0),
                rtol=1e-6,
            )
            with np.load(pred / f"{case}.npz") as z:
                raw_prob = z["probabilities"]
            assert raw_prob.shape == (4, *SHAPE[::-1])  # nnU-Net writes its own axis order
            prob, affine = read_probabilities(str(pred / f"{case}.npz"))
            prob = prob.numpy()
            assert prob.shape == (4, *SHAPE)
            np.testing.assert_allclose(affine, original.affine, atol=1e-5)
            np.testing.assert_allclose(prob.sum(0), 1.0, atol=5e-3)
            # nnU-Net's segmentation (written by nnU-Net on the original grid) is the argmax
            seg = np.asarray(nib.load(pred / f"{case}.nii.gz").dataobj)
            assert seg.shape == SHAPE
            np.testing.assert_array_equal(prob.argmax(0), seg)
            truth = np.asarray(nib.load(study["synth"] / "labelsTr" / f"{case}.nii.gz").dataobj)
            organ = truth == ORGAN
            predicted = prob.argmax(0) == ORGAN
            flipped = [
                _dice(np.flip(predicted, axes), organ)
                for n in (1, 2, 3)
                for axes in itertools.combinations(range(3), n)
            ]
            here = _dice(predicted, organ)
            assert here > 0.6, (member, case, here)
            assert here > max(flipped) + 0.3, (member, case, here, flipped)


def test_combine_and_metrics_read_the_members(study):
    root = study["root"]
    ensembles = root / "ens" / "ensembles"
    assert sorted(p.name for p in ensembles.iterdir()) == ["global", "rater1", "rater2"]
    members = {
        m: {
            case: read_probabilities(str(root / "ens" / m / "predictions" / f"{case}.npz"))[
                0
            ].numpy()
            for case in TEST_CASES
        }
        for m in MEMBERS
    }
    df = pd.read_csv(root / "metrics.csv", dtype={"case": str, "rater": str})
    # per-case rows, and the case-level AURC/E-AURC over all cases
    assert sorted(df["case"].unique()) == ["ALL", *TEST_CASES]
    assert {"ece", "ace"} <= set(df["metric"].str.lower())
    for case in TEST_CASES:
        glob = ensembles / "global"
        for suffix in ("_prob", "_seg", "_entropy", "_epistemic"):
            assert (glob / f"{case}{suffix}.nii.gz").is_file()
        # the global ensemble is the mean of the two members (channel last in calibseg's file)
        ens_prob = np.moveaxis(np.asarray(nib.load(glob / f"{case}_prob.nii.gz").dataobj), -1, 0)
        np.testing.assert_allclose(
            ens_prob, (members[MEMBERS[0]][case] + members[MEMBERS[1]][case]) / 2, atol=1e-4
        )
        # a per-rater ensemble of one seed is that member
        for k, m in ((1, MEMBERS[0]), (2, MEMBERS[1])):
            rater_prob = np.asarray(
                nib.load(ensembles / f"rater{k}" / f"{case}_prob.nii.gz").dataobj
            )
            np.testing.assert_allclose(np.moveaxis(rater_prob, -1, 0), members[m][case], atol=1e-4)
        # the table's organ Dice against the majority label, recomputed from the files
        seg = np.asarray(nib.load(glob / f"{case}_seg.nii.gz").dataobj)
        truth = np.asarray(nib.load(study["synth"] / "labelsTr" / f"{case}.nii.gz").dataobj)
        row = df[
            (df["case"] == case)
            & (df["class"] == "organ")
            & (df["rater"] == "majority")
            & (df["metric"] == "dice")
        ]
        assert len(row) == 1
        assert row["value"].iloc[0] == pytest.approx(_dice(seg == ORGAN, truth == ORGAN), abs=1e-6)


def test_nnunet_predict_finds_the_trainer(study):
    pytest.importorskip(
        "timm",
        reason="nnUNetv2_predict's trainer lookup imports all of nnU-Net's trainers, whose "
        "Primus ones need timm (and torchvision, which make nnunet leaves out on CPU torch)",
    )
    env = dict(study["env"])
    env["nnUNet_results"] = str(study["root"] / "ens" / "rater1_seed7")
    env["nnUNet_extTrainer"] = trainer_path()
    out = study["root"] / "nnunet_predict"
    _run(
        [
            "nnUNetv2_predict",
            "-i",
            str(study["images"]),
            "-o",
            str(out),
            "-d",
            "901",
            "-c",
            "3d_fullres",
            "-tr",
            "nnUNetTrainerHardL1ACE",
            "-f",
            "0",
            "-device",
            "cpu",
            "-npp",
            "1",
            "-nps",
            "1",
            "--disable_progress_bar",
        ],
        env,
        study["root"],
    )
    ours = study["root"] / "ens" / "rater1_seed7" / "predictions"
    for case in TEST_CASES:
        np.testing.assert_array_equal(
            np.asarray(nib.load(out / f"{case}.nii.gz").dataobj),
            np.asarray(nib.load(ours / f"{case}.nii.gz").dataobj),
        )


def test_seed_controls_he_initialisation(study, tmp_path):
    env = {k: study["env"][k] for k in ("nnUNet_raw", "nnUNet_preprocessed")}
    with nnunet_env(nnUNet_results=str(tmp_path), **env):
        weights = []
        for seed in (3, 3, 4):
            t = build_trainer(901, "3d_fullres", 0, "softl1ace", TrainOptions(seed=seed))
            t.initialize()
            weights.append(torch.cat([p.detach().flatten() for p in t.network.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.allclose(weights[0], weights[2])


def test_early_stopping_on_pseudo_dice(study, tmp_path):
    env = {k: study["env"][k] for k in ("nnUNet_raw", "nnUNet_preprocessed")}
    with nnunet_env(nnUNet_n_proc_DA="0", **env):
        # no gain can exceed 1: stops after the first epoch without improvement (epoch 2)
        fold = train(
            901,
            "3d_fullres",
            0,
            loss="dicece",
            options=TrainOptions(
                seed=1,
                patience=1,
                min_delta=1.0,
                epochs=6,
                iterations_per_epoch=1,
                val_iterations_per_epoch=1,
            ),
            results=str(tmp_path),
            validate=False,
        )
    ck = load_checkpoint(os.path.join(fold, "checkpoint_final.pth"))
    assert ck["current_epoch"] == 2
    assert len(ck["logging"]["ema_fg_dice"]) == 2
