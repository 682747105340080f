import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibseg.cli.app import app

runner = CliRunner()


def test_combine_cli_members_and_bundle_strategies(members, tmp_path):
    bundle, data = members
    dirs = [os.path.join(bundle, n, "predictions") for n in data]
    out = str(tmp_path / "ens")
    r = runner.invoke(
        app, ["ensemble", "combine", "--members", dirs[0], dirs[1], dirs[2], "--out", out]
    )
    assert r.exit_code == 0, r.output
    meta = json.load(open(os.path.join(out, "ensemble.json")))
    assert [m["name"] for m in meta["members"]] == list(data)
    assert meta["strategy"] == "global" and meta["uncertainty_units"] == "nats"

    r = runner.invoke(app, ["ensemble", "combine", "--bundle", bundle, "--strategy", "per-rater"])
    assert r.exit_code == 0, r.output
    ens = os.path.join(bundle, "ensembles")
    assert sorted(os.listdir(ens)) == ["rater1", "rater2"]
    m1 = json.load(open(os.path.join(ens, "rater1", "ensemble.json")))
    assert [m["name"] for m in m1["members"]] == ["rater1_seed1", "rater1_seed2"]
    assert m1["group"] == "rater1" and m1["strategy"] == "per-rater"
    # a single-member group is that member
    p = nib.load(os.path.join(ens, "rater2", "case_a_prob.nii.gz")).get_fdata()
    np.testing.assert_allclose(p, np.moveaxis(data["rater2_seed1"]["case_a"], 0, -1), atol=1e-6)

    named = str(tmp_path / "named")
    r = runner.invoke(
        app,
        [
            "ensemble",
            "combine",
            "--bundle",
            bundle,
            "--group",
            "s1=rater1_seed1,rater2_seed1",
            "--out",
            named,
            "--method",
            "weighted",
            "--weights",
            "3,1,1",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.load(open(os.path.join(named, "ensemble.json")))
    assert meta["weights"] == pytest.approx([0.75, 0.25]) and meta["group"] == "s1"

    r = runner.invoke(app, ["ensemble", "combine", "--out", out])
    assert r.exit_code != 0 and "either --members" in str(r.exception)
    r = runner.invoke(
        app, ["ensemble", "combine", "--members", dirs[0], "--out", out, "--method", "vote"]
    )
    assert r.exit_code == 2 and "Invalid value for '--method'" in r.output  # a typer choice


def test_help_has_examples():
    for cmd in (
        ["ensemble", "train"],
        ["ensemble", "predict"],
        ["ensemble", "combine"],
        ["metrics", "compute"],
        ["metrics", "compare"],
    ):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output, cmd


@pytest.mark.slow
def test_three_raters_two_seeds_end_to_end(tmp_path):
    """Train 3 raters × 2 seeds with the bundle runner, predict, combine, measure, compare."""
    from calibseg.bundles import create_bundle
    from calibseg.data.synthetic import generate

    ds = generate(str(tmp_path / "data"), n_cases=5, n_raters=3, shape=(16, 16, 16), seed=0)
    tiny = {
        "common#roi_size": [16, 16, 16],
        "common#network_def#init_filters": 4,
        "common#deep_supervision_depth": 2,
        "train#max_epochs": 1,
    }
    bundle = create_bundle(
        "synthetic",
        "baseline_ce",
        out=str(tmp_path / "b"),
        data_root=str(tmp_path / "data"),
        overrides=tiny,
    )
    r = runner.invoke(app, ["ensemble", "train", bundle, "--raters", "1,2,3", "--seeds", "0,11"])
    assert r.exit_code == 0, r.output
    names = [f"rater{k}_seed{s}" for k in (1, 2, 3) for s in (0, 11)]
    for n in names:
        summary = json.load(open(os.path.join(bundle, n, "training_summary.json")))
        assert summary["epochs"] == 1
    r = runner.invoke(app, ["ensemble", "predict", bundle])
    assert r.exit_code == 0, r.output
    test_cases = [it["case"] for it in json.load(open(os.path.join(bundle, "splits.json")))["test"]]
    for n in names:
        assert sorted(os.listdir(os.path.join(bundle, n, "predictions"))) == sorted(
            f"{c}_{k}.nii.gz" for c in test_cases for k in ("prob", "seg")
        )
    assert (
        runner.invoke(
            app, ["ensemble", "combine", "--bundle", bundle, "--strategy", "per-rater"]
        ).exit_code
        == 0
    )
    glob_dir = os.path.join(bundle, "ensembles", "global")
    r = runner.invoke(app, ["ensemble", "combine", "--bundle", bundle, "--out", glob_dir])
    assert r.exit_code == 0, r.output
    meta = json.load(open(os.path.join(glob_dir, "ensemble.json")))
    assert sorted(m["name"] for m in meta["members"]) == sorted(names) and meta["cases"] == sorted(
        test_cases
    )
    for k in (1, 2, 3):
        sub = json.load(open(os.path.join(bundle, "ensembles", f"rater{k}", "ensemble.json")))
        assert [m["name"] for m in sub["members"]] == [f"rater{k}_seed0", f"rater{k}_seed11"]
    c = test_cases[0]
    load = lambda s: nib.load(os.path.join(glob_dir, f"{c}_{s}.nii.gz")).get_fdata()  # noqa: E731
    tot, alea, epi = load("entropy"), load("aleatoric"), load("epistemic")
    assert (epi >= 0).all() and np.allclose(tot, alea + epi, atol=1e-5)
    assert tot.max() <= np.log(4) + 1e-5

    out = str(tmp_path / "metrics.csv")
    r = runner.invoke(
        app,
        [
            "metrics",
            "compute",
            "--pred",
            glob_dir,
            "--raters",
            ds,
            "--out",
            out,
            "--model",
            "ensemble",
            "--group",
            "ensemble",
        ],
    )
    assert r.exit_code == 0, r.output
    for n in names:
        r = runner.invoke(
            app,
            [
                "metrics",
                "compute",
                "--pred",
                os.path.join(bundle, n),
                "--raters",
                ds,
                "--out",
                out,
                "--group",
                "member",
                "--append",
            ],
        )
        assert r.exit_code == 0, r.output
    df = pd.read_csv(out, dtype={"case": str, "rater": str})
    assert set(df["model"]) == {"ensemble", *names}
    ok = df[df.metric.isin(["dice_consensus", "confidence", "ece", "ece_toplabel"])]["value"]
    assert ((ok >= 0) & (ok <= 1)).all()
    r = runner.invoke(
        app,
        [
            "metrics",
            "compare",
            out,
            "--a",
            ",".join(names),
            "--b",
            "ensemble",
            "--metric",
            "dice_consensus",
            "--n-boot",
            "200",
        ],
    )
    assert r.exit_code == 0, r.output


def test_user_errors_are_one_line(monkeypatch, capsys, tmp_path):
    from calibseg.cli.common import run_app

    monkeypatch.setattr(
        "sys.argv", ["calibseg", "ensemble", "combine", "--members", str(tmp_path), "--out", "x"]
    )
    assert run_app(app) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no predictions in" in err and "Traceback" not in err
