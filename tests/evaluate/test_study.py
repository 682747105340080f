"""Calibration study: runs, resumption, temperature rows, statistics, report (browser-tested)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from calibseg.evaluate.study_report import holm, paired_tests, reference_of, summary_table


def test_holm_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.06, 0.04) = 0.06
    got = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(got[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(got[4])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # 0.5·2 capped at 1; monotone


def _frame():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        for i in range(5):
            case = f"c{i}"
            for loss, delta in (("base", 0.0), ("ace", -0.01 * (i + 1))):
                v = 0.1 + 0.05 * i + shift
                rows.append(
                    dict(
                        loss=loss,
                        calibration="none",
                        seed=seed,
                        case=case,
                        metric="ace",
                        value=v + delta,
                    )
                )
                rows.append(
                    dict(
                        loss=loss,
                        calibration="none",
                        seed=seed,
                        case=case,
                        metric="dice",
                        value=0.8,
                    )
                )
            rows.append(
                dict(
                    loss="base",
                    calibration="none",
                    seed=seed,
                    case="",
                    metric="micro_ace",
                    value=0.3 + shift,
                )
            )
            rows.append(
                dict(
                    loss="ace",
                    calibration="none",
                    seed=seed,
                    case="",
                    metric="micro_ace",
                    value=0.2 + shift,
                )
            )
    return pd.DataFrame(rows)


def test_summary_and_paired_tests_by_hand():
    frame = _frame()
    table = summary_table(frame)
    # base: seed means 0.2 and 0.4 → 0.3 ± 0.1 (population std over seeds)
    assert table.loc[("base", "none"), "ace_mean"] == pytest.approx(0.3)
    assert table.loc[("base", "none"), "ace_std"] == pytest.approx(0.1)
    assert table.loc[("ace", "none"), "ace_mean"] == pytest.approx(0.27)
    # micro: the dataset row per seed, not averaged with cases
    assert table.loc[("ace", "none"), "micro_ace_mean"] == pytest.approx(0.3)
    tests = paired_tests(frame, n_boot=2000)
    ace = tests[tests.metric == "ace"].iloc[0]
    assert ace["n_cases"] == 5 and ace["mean_diff"] == pytest.approx(-0.03)
    # 5 cases, every difference negative: exact two-sided Wilcoxon p = 2 / 2**5
    assert ace["p_value"] == pytest.approx(0.0625) and ace["p_holm"] == pytest.approx(0.0625)
    assert ace["ci_low"] <= -0.03 <= ace["ci_high"] and ace["ci_high"] < 0


def _nnunet_frame(losses):
    """ACE per case i of 5: base 0.1 + 0.05 i; nnunet_dicece 0.1 higher; nnunet_hardl1ace
    0.01 (i + 1) below nnunet_dicece; every loss also with temperature (0.02 lower)."""
    offset = {"base": 0.0, "nnunet_dicece": 0.1, "nnunet_hardl1ace": 0.1}
    rows = []
    for loss in losses:
        for cal, shift in (("none", 0.0), ("temperature", -0.02)):
            for i in range(5):
                v = 0.1 + 0.05 * i + offset[loss] + shift
                if loss == "nnunet_hardl1ace":
                    v -= 0.01 * (i + 1)
                rows.append(
                    dict(loss=loss, calibration=cal, seed=0, case=f"c{i}", metric="ace", value=v)
                )
    return pd.DataFrame(rows)


def test_nnunet_rows_are_compared_with_nnunet_dicece_by_hand():
    frame = _nnunet_frame(["base", "nnunet_dicece", "nnunet_hardl1ace"])
    refs = reference_of(frame)
    assert refs == {
        ("nnunet_dicece", "none"): ("base", "none"),
        ("nnunet_hardl1ace", "none"): ("nnunet_dicece", "none"),
        ("base", "temperature"): ("base", "none"),
        ("nnunet_dicece", "temperature"): ("nnunet_dicece", "none"),
        ("nnunet_hardl1ace", "temperature"): ("nnunet_dicece", "none"),
    }
    tests = paired_tests(frame, n_boot=200).set_index(["loss", "calibration"])
    # mean of 0.01 (i + 1) over i = 0..4 is 0.03 below nnunet_dicece (not 0.07 above base)
    assert tests.loc[("nnunet_hardl1ace", "none"), "mean_diff"] == pytest.approx(-0.03)
    assert tests.loc[("nnunet_hardl1ace", "none"), "reference"] == "nnunet_dicece"
    assert tests.loc[("nnunet_hardl1ace", "temperature"), "mean_diff"] == pytest.approx(-0.05)
    assert tests.loc[("nnunet_dicece", "none"), "mean_diff"] == pytest.approx(0.1)
    # without nnunet_dicece every row is compared with the first loss
    alone = reference_of(_nnunet_frame(["base", "nnunet_hardl1ace"]))
    assert set(alone.values()) == {("base", "none")}
    # nnunet_dicece first: it is the baseline of every row
    first = reference_of(_nnunet_frame(["nnunet_dicece", "base", "nnunet_hardl1ace"]))
    assert set(first.values()) == {("nnunet_dicece", "none")}


@pytest.fixture(scope="module")
def study(tiny_overrides, tmp_path_factory):
    from calibseg.data.synthetic import generate
    from calibseg.evaluate.study import StudySettings, run_study

    root = tmp_path_factory.mktemp("study")
    generate(str(root / "data"), n_cases=8, n_raters=2, shape=(16, 16, 16), seed=0)
    settings = StudySettings(
        data_root=str(root / "data"),
        losses=("baseline_dice_ce", "hardl1ace_dice_ce"),
        seeds=(0, 1),
        overrides={**tiny_overrides, "data#split_fractions": [0.5, 0.25, 0.25]},
        patience=0,
    )
    res = run_study(str(root / "out"), settings, progress=False)
    return root, settings, res


@pytest.mark.slow
def test_study_outputs_and_statistics(study):

    root, settings, res = study
    out = root / "out"
    frame = pd.read_csv(out / "study.csv", keep_default_na=False, na_values=[""])
    assert set(frame.loss) == set(settings.losses)
    assert set(frame.calibration) == {"none", "temperature"} and set(frame.seed) == {0, 1}
    # the table's ACE of one row recomputed from the run's own cases.csv (foreground mean per case)
    bundle = res["bundles"]["hardl1ace_dice_ce"]
    cases = pd.read_csv(os.path.join(bundle, "seed_1", "evaluation", "cases.csv"))
    fg = cases[(cases["class"] != "background") & (cases.metric == "ace")]
    expected = fg.groupby("case")["value"].mean().mean()
    got = frame[
        (frame.loss == "hardl1ace_dice_ce")
        & (frame.calibration == "none")
        & (frame.seed == 1)
        & (frame.metric == "ace")
    ]
    assert got["value"].mean() == pytest.approx(expected)
    # one temperature keeps every voxel's argmax: Dice and HD95 unchanged, calibration not
    for metric in ("dice", "hd95"):
        a = frame[(frame.calibration == "none") & (frame.metric == metric)].sort_values(
            ["loss", "seed", "case"]
        )
        b = frame[(frame.calibration == "temperature") & (frame.metric == metric)].sort_values(
            ["loss", "seed", "case"]
        )
        np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), equal_nan=True)
    for run in res["runs"]:
        fit = run["temperature"]
        assert fit["val_nll_after"] <= fit["val_nll_before"] + 1e-9
    for name in ("report.html", "summary.csv", "tests.csv", "study.json"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_study_rerun_continues_without_training(study, monkeypatch):
    from calibseg.bundles import runner
    from calibseg.evaluate.study import run_study

    root, settings, res = study

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    again = run_study(str(root / "out"), settings, progress=False, report=False)
    pd.testing.assert_frame_equal(again["frame"], res["frame"])


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed"
    if not chromium or not driver:
        return None, "Debian's chromium and chromium-driver are not installed"
    return (chromium, driver), ""


@pytest.mark.slow
def test_report_in_headless_chromium(study, tmp_path):
    found, why = _browser()
    if found is None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root, _, _ = study
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,2400",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        drv.get((root / "out" / "report.html").as_uri())
        images = drv.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"
        )
        # validation curves + one reliability histogram per (loss, post-hoc) for the first seed
        assert len(images) == 1 + 2 * 2
        assert all(done and width > 0 for done, width, _ in images), images
        rows = drv.execute_script("return document.querySelectorAll('#summary tbody tr').length;")
        assert rows == 4
        shot = tmp_path / "report.png"
        assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        drv.quit()


def test_cli_study_bad_option_is_one_line(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "calibseg")
    r = subprocess.run(
        [exe, "study", "--out", str(tmp_path / "s"), "--temperature", "cubic", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "temperature must be" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was written
