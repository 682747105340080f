"""evaluate_run on hand-made run folders with analytically known results."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibseg import storage
from calibseg.cli.app import app
from calibseg.evaluate import evaluate_run
from calibseg.metrics import load_bin_stats

NAMES = ["background", "liver", "tumour"]


def test_perfect_prediction_gives_dice_one_zero_calibration_error(fake, tmp_path):
    labels = fake.random_labels(3)
    bundle = fake.make_run(tmp_path, labels, [fake.one_hot_last(lab, 3) for lab in labels], NAMES)
    s = evaluate_run(bundle, progress=False)
    out = os.path.join(bundle, "seed_0", "evaluation")
    assert s["output_dir"] == out and s["num_cases"] == 3
    for name in NAMES:
        c = s["classes"][name]
        assert c["dice"] == {"mean": 1.0, "std": 0.0, "n": 3}
        assert c["hd95"]["mean"] == 0.0
        assert c["macro"] == c["micro"] == {"ece": 0.0, "ace": 0.0, "mce": 0.0}
        assert c["missing_cases"] == 0
    df = pd.read_csv(os.path.join(out, "cases.csv"))
    assert list(df.columns) == ["case", "class", "metric", "value"]
    assert len(df) == 3 * 3 * 8
    stats, cases, classes = load_bin_stats(os.path.join(out, "bin_stats.npz"))
    assert cases == ["case_00", "case_01", "case_02"] and classes == NAMES
    # every voxel lands in exactly one bin of each class
    assert stats.weight.shape == (3, 3, 20)
    assert (stats.weight.sum(-1) == np.prod(labels[0].shape)).all()
    assert os.path.isfile(os.path.join(out, "dataset_reliability_diagram.png"))


def test_constant_probabilities_macro_and_micro_match_hand_computation(fake, no_figures, tmp_path):
    """p_c constant over the volume → one non-empty bin: ECE = ACE = MCE = |p_c − freq_c|."""
    labels = fake.random_labels(3, seed=1)
    labels[2][:] = 0  # case 2 has only background → classes 1, 2 missing
    p = np.array([0.55, 0.3, 0.15], np.float32)
    probs = [np.broadcast_to(p, (*lab.shape, 3)).copy() for lab in labels]
    bundle = fake.make_run(tmp_path, labels, probs, NAMES)
    s = evaluate_run(bundle, progress=False, num_bins=10)
    freq = np.stack([[np.mean(lab == c) for c in range(3)] for lab in labels])  # [N, C]
    total = np.mean(np.stack(labels)[..., None] == np.arange(3), axis=(0, 1, 2, 3))
    p64 = p.astype(np.float64)
    for c, name in enumerate(NAMES):
        cls = s["classes"][name]
        macro = np.mean(np.abs(p64[c] - freq[:, c]))
        for k in ("ece", "ace", "mce"):
            assert cls["macro"][k] == pytest.approx(macro, abs=1e-12)
            assert cls["micro"][k] == pytest.approx(abs(p64[c] - total[c]), abs=1e-12)
    # argmax is background everywhere: Dice_bg = 2·n0/(n0 + N); other classes 0 or undefined
    n = labels[0].size
    dice_bg = [2 * np.sum(lab == 0) / (np.sum(lab == 0) + n) for lab in labels]
    assert s["classes"]["background"]["dice"]["mean"] == pytest.approx(np.mean(dice_bg))
    # liver: predicted nowhere; cases 0, 1 miss it (0), case 2 has none to find (1)
    assert s["classes"]["liver"]["dice"] == pytest.approx(
        {"mean": 1 / 3, "std": np.std([0, 0, 1]), "n": 3}
    )
    assert s["classes"]["liver"]["missing_cases"] == 1
    df = pd.read_csv(os.path.join(s["output_dir"], "cases.csv"))
    miss = df[(df.case == "case_02") & (df.metric == "missing")].set_index("class").value
    assert miss.to_dict() == {"background": 0.0, "liver": 1.0, "tumour": 1.0}


def test_hd95_uses_voxel_spacing(fake, no_figures, tmp_path):
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[3:8, 3:8, 3:8] = 1
    pred = np.roll(lab, 1, axis=0)  # shifted one voxel along x (spacing 1.5)
    bundle = fake.make_run(tmp_path, [lab], [fake.one_hot_last(pred, 2)], ["background", "organ"])
    s = evaluate_run(bundle, progress=False)
    assert s["classes"]["organ"]["hd95"]["mean"] == pytest.approx(fake.SPACING[0])
    assert s["classes"]["organ"]["dice"]["mean"] == pytest.approx(2 * 100 / 250)


def test_missed_and_hallucinated_structures_cost_the_image_diagonal(fake, no_figures, tmp_path):
    shape = (12, 10, 8)
    found = np.zeros(shape, np.uint8)
    found[3:8, 3:8, 2:6] = 1
    missed = found.copy()  # the organ is there, the prediction is all background
    empty = np.zeros(shape, np.uint8)  # no organ, the prediction draws one
    labels = [found, missed, empty]
    preds = [found, np.zeros(shape, np.uint8), found]
    bundle = fake.make_run(
        tmp_path, labels, [fake.one_hot_last(p, 2) for p in preds], ["background", "organ"]
    )
    s = evaluate_run(bundle, progress=False)
    # the largest distance in the image: ((12−1)·1.5, (10−1)·1, (8−1)·2) mm
    diag = np.sqrt((11 * 1.5) ** 2 + 9**2 + 14**2)
    organ = s["classes"]["organ"]
    assert organ["hd95"] == pytest.approx(
        {
            "mean": 2 * diag / 3,
            "std": np.std([0, diag, diag]),
            "n": 3,
            "missed": 1,
            "hallucinated": 1,
        }
    )
    # Dice as in validation (ignore_empty=False): found 1, missed 0, hallucinated 0
    assert organ["dice"] == pytest.approx({"mean": 1 / 3, "std": np.std([1, 0, 0]), "n": 3})
    df = pd.read_csv(os.path.join(s["output_dir"], "cases.csv"))
    org = df[df["class"] == "organ"].pivot(index="case", columns="metric", values="value")
    assert org["missed"].tolist() == [0.0, 1.0, 0.0]
    assert org["hallucinated"].tolist() == [0.0, 0.0, 1.0]


def test_dice_empty_class_convention_is_the_validation_one():
    """Validation (the bundle's DiceMetric) and evaluation score empty classes alike."""
    from importlib import resources

    import torch
    import yaml
    from monai.metrics import compute_dice

    tpl = resources.files("calibseg.bundles").joinpath("templates", "configs", "validation.yaml")
    cfg = yaml.safe_load(tpl.read_text())
    ignore_empty = cfg["dice_metric"]["ignore_empty"]
    assert ignore_empty is False
    # both empty → 1, hallucinated → 0: what evaluate reports (test above)
    none, some = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert compute_dice(none, none, ignore_empty=ignore_empty).item() == 1.0
    assert compute_dice(some, none, ignore_empty=ignore_empty).item() == 0.0


def test_second_evaluation_goes_to_a_new_folder(fake, no_figures, tmp_path):
    labels = fake.random_labels(2)
    bundle = fake.make_run(tmp_path, labels, [fake.one_hot_last(lab, 3) for lab in labels], NAMES)
    first = evaluate_run(bundle, progress=False)["output_dir"]
    before = open(os.path.join(first, "summary.json")).read()
    second = evaluate_run(bundle, progress=False, num_bins=5)["output_dir"]
    assert second == first + "_2"
    assert open(os.path.join(first, "summary.json")).read() == before
    assert storage.read_json(os.path.join(second, "summary.json"))["num_bins"] == 5


def test_missing_prediction_and_shape_mismatch_are_clear_errors(fake, tmp_path):
    labels = fake.random_labels(2)
    bundle = fake.make_run(tmp_path, labels, [fake.one_hot_last(lab, 3) for lab in labels], NAMES)
    os.remove(os.path.join(bundle, "seed_0", "predictions", "case_01_prob.nii.gz"))
    with pytest.raises(FileNotFoundError, match="no prediction for case case_01"):
        evaluate_run(bundle, progress=False)
    fake.write_nifti(
        os.path.join(bundle, "seed_0", "predictions", "case_01_prob.nii.gz"),
        np.zeros((10, 9, 7, 3), np.float32),
    )
    with pytest.raises(ValueError, match=r"case case_01: prediction grid \(10, 9, 7\)"):
        evaluate_run(bundle, progress=False)
    with pytest.raises(FileNotFoundError, match="no prediction"):
        evaluate_run(bundle, run_name="seed_9", progress=False)
    with pytest.raises(ValueError, match="--regions needs"):
        evaluate_run(bundle, regions=True, progress=False)


def test_kits_regions_perfect_prediction(fake, no_figures, tmp_path):
    labels = fake.random_labels(2, c=4, seed=3)
    for lab in labels:
        lab[6:8, 1:3, 1:3] = 3  # cyst
    names = ["background", "kidney", "tumour", "cyst"]
    bundle = fake.make_run(
        tmp_path, labels, [fake.one_hot_last(lab, 4) for lab in labels], names, dataset="kits23"
    )
    s = evaluate_run(bundle, regions=True, progress=False)
    assert s["class_names"] == ["background", "tumour", "masses", "kidney_and_masses"]
    for c in s["classes"].values():
        assert c["dice"]["mean"] == 1.0 and c["micro"]["ece"] == 0.0


def _brats_raw_labels(n: int) -> list[np.ndarray]:
    """BraTS-style raw labels: 0 background, 1 NCR, 2 ED, 4 ET (no 3), as in the dataset files."""
    labels = []
    for i in range(n):
        lab = np.zeros((10, 9, 8), np.uint8)
        lab[2:8, 2:7, 2:6] = 2  # oedema around the core
        lab[3:6, 3:6, 3:5] = 1  # necrotic core
        lab[6 : 7 + i, 4:6, 3:5] = 4  # enhancing tumour, raw label 4
        labels.append(lab)
    return labels


def test_brats_raw_label_4_is_mapped_to_class_3_as_in_training(fake, no_figures, tmp_path):
    labels = _brats_raw_labels(2)
    names = ["background", "necrotic tumour core", "peritumoral oedema", "enhancing tumour"]
    # the model's channels are the training classes: raw 4 is class 3
    probs = [fake.one_hot_last(np.where(lab == 4, 3, lab), 4) for lab in labels]
    bundle = fake.make_run(tmp_path, labels, probs, names, dataset="brats21")
    s = evaluate_run(bundle, progress=False)
    for name in names:
        c = s["classes"][name]
        assert c["dice"]["mean"] == 1.0 and c["micro"]["ece"] == 0.0
    stats, _, _ = load_bin_stats(os.path.join(s["output_dir"], "bin_stats.npz"))
    et = [int((lab == 4).sum()) for lab in labels]  # counted on the raw files
    assert stats.sum_gt[:, 3].sum(-1).tolist() == et
    # region evaluation reads the same mapped labels: ET region = raw 4, WT = raw 1, 2, 4
    r = evaluate_run(bundle, regions=True, progress=False)
    for c in r["classes"].values():
        assert c["dice"]["mean"] == 1.0 and c["micro"]["ece"] == 0.0
    # a dataset without a map keeps refusing values outside its classes, in one line
    other = fake.make_run(tmp_path / "other", labels, probs, names, dataset="synthetic")
    with pytest.raises(ValueError, match=r"label values must be in \[0, 3\], got \[0, 4\]"):
        evaluate_run(other, progress=False)


def test_cli_prints_table_and_rejects_seed_with_run(fake, no_figures, tmp_path, monkeypatch):
    from calibseg.cli import common

    monkeypatch.setattr(common.console, "width", 200)
    labels = fake.random_labels(2)
    bundle = fake.make_run(
        tmp_path,
        labels,
        [fake.one_hot_last(lab, 3) for lab in labels],
        NAMES,
        run_name="rater1_seed11",
    )
    res = CliRunner().invoke(
        app, ["evaluate", bundle, "--run", "rater1_seed11"], terminal_width=200
    )
    assert res.exit_code == 0, res.output
    assert "liver" in res.output and "1.000±0.000" in res.output and "ECE µ" in res.output
    res = CliRunner().invoke(app, ["evaluate", bundle, "--seed", "1", "--run", "x"])
    assert res.exit_code != 0 and "either --seed or --run" in str(res.exception)


def test_bundle_and_outputs_on_s3(fake, tmp_path, s3_bucket):
    labels = fake.random_labels(2)
    local = fake.make_run(tmp_path, labels, [fake.one_hot_last(lab, 3) for lab in labels], NAMES)
    url = f"s3://{s3_bucket}/bundles/b1"
    # labels on S3 too: rewrite splits.json to point at uploaded copies
    storage.push(os.path.join(str(tmp_path), "data"), f"s3://{s3_bucket}/data")
    splits = storage.read_json(os.path.join(local, "splits.json"))
    for it in splits["test"]:
        it["label"] = f"s3://{s3_bucket}/data/{os.path.basename(it['label'])}"
    storage.write_json(os.path.join(local, "splits.json"), splits)
    storage.push(local, url)
    s = evaluate_run(url, progress=False)
    assert s["output_dir"] == f"{url}/seed_0/evaluation"
    assert s["classes"]["liver"]["dice"]["mean"] == 1.0
    names = {e["rel"] for e in storage.list_files(s["output_dir"])}
    assert names == {
        "cases.csv",
        "summary.json",
        "bin_stats.npz",
        "dataset_reliability_diagram.png",
    }
    assert "testing-secret-value" not in storage.read_text(f"{s['output_dir']}/summary.json")


def test_study_temperature_fit_reads_labels_through_the_map(fake, tmp_path):
    """The study's temperature fit reads the raw label files too: with BraTS's map, correct but
    under-confident predictions (0.7 on the true class) are sharpened (T < 1)."""
    from calibseg.evaluate.study import _temperature_run

    labels = _brats_raw_labels(2)
    classes = [np.where(lab == 4, 3, lab) for lab in labels]
    probs = [0.1 + 0.6 * fake.one_hot_last(c, 4) for c in classes]  # rows sum to 1
    names = ["background", "necrotic tumour core", "peritumoral oedema", "enhancing tumour"]
    bundle = fake.make_run(tmp_path, labels, probs, names, dataset="brats21")
    with open(os.path.join(bundle, "splits.json")) as f:
        items = json.load(f)["test"]
    splits = {"validation": items, "test": items}
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\], got \[0, 4\]"):
        _temperature_run(bundle, "seed_0", splits, "scalar")  # raw 4 is not a class
    fit = _temperature_run(bundle, "seed_0", splits, "scalar", {4: 3})
    assert fit["temperature"] < 1.0 and fit["val_nll_after"] < fit["val_nll_before"]
