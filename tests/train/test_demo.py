"""The demo: `calibseg demo` end to end at toy size; the seed/case summary and paired test."""

import functools
import os

import pytest
from typer.testing import CliRunner

from calibseg.bundles import demo as D
from calibseg.cli.app import app


@pytest.mark.slow
def test_demo_tiny(tmp_path, monkeypatch, tiny_overrides):
    from calibseg.cli import common

    monkeypatch.setattr(common.console, "width", 250)
    extra = {k: v for k, v in tiny_overrides.items() if k != "train#max_epochs"}
    tiny = functools.partial(
        D.DemoSettings,
        shape=(16, 16, 16),
        roi_size=(16, 16, 16),
        init_filters=4,
        val_interval=1,
        losses=("baseline_dice_ce", "hardl1ace_dice_ce"),
        extra_overrides={**extra, "data#split_fractions": [0.5, 0.17, 0.33]},
    )
    monkeypatch.setattr(D, "DemoSettings", tiny)
    out = str(tmp_path / "demo")
    args = ["demo", "--out", out, "--epochs", "1", "--cases", "6"]
    res = CliRunner().invoke(app, args, terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "baseline_dice_ce" in res.output and "hardl1ace_dice_ce" in res.output
    assert "±" not in res.output and "Wilcoxon" not in res.output  # one seed
    bundles = sorted(os.listdir(os.path.join(out, "bundles")))
    assert len(bundles) == 2
    for b in bundles:
        for seed in (0,):
            ev = os.path.join(out, "bundles", b, f"seed_{seed}", "evaluation")
            assert os.path.isfile(os.path.join(ev, "dataset_reliability_diagram.png"))
            assert os.path.join(ev, "dataset_reliability_diagram.png") in res.output.replace(
                "\n", ""
            )

    # the per-case table is the foreground mean of the evaluation's cases.csv
    import pandas as pd

    ev = os.path.join(out, "bundles", bundles[0], "seed_0", "evaluation")
    df = pd.read_csv(os.path.join(ev, "cases.csv"))
    fg = df[(df["class"] != "background") & (df["metric"] == "ace")]
    expected = fg.groupby("case")["value"].mean()
    got = D.case_metrics(ev)["ace"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)

    # rerunning reuses everything (runs are complete, evaluations exist)
    res2 = CliRunner().invoke(app, args, terminal_width=250)
    assert res2.exit_code == 0
    table = [ln for ln in res.output.splitlines() if "dice_ce" in ln]
    assert table == [ln for ln in res2.output.splitlines() if "dice_ce" in ln]
    # other sizes in the same folder: refused, nothing mixed
    res3 = CliRunner().invoke(app, [*args[:-1], "7"])
    assert res3.exit_code != 0 and "other synthetic data" in str(res3.exception)


def test_summarise_mean_std_and_wilcoxon():
    import numpy as np
    import pandas as pd

    idx = pd.MultiIndex.from_product([[0, 1], [f"c{i}" for i in range(5)]], names=["seed", "case"])
    values = np.r_[np.linspace(0.1, 0.3, 5), np.linspace(0.3, 0.5, 5)]  # seed means 0.2, 0.4
    base = pd.DataFrame({m: values for m in D.METRICS}, index=idx)
    better = base.copy()
    better["ace"] = base["ace"] - np.tile([0.01, 0.02, 0.03, 0.04, 0.05], 2)  # lower on every case
    table, tests = D.summarise({"baseline_dice_ce": base, "softl1ace_dice_ce": better})
    # per-seed means 0.2 and 0.4 → mean 0.3, population std 0.1
    mean, std = table["baseline_dice_ce"]["dice"]
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1)
    assert table["softl1ace_dice_ce"]["ace"][0] == pytest.approx(0.27)
    # 5 cases, all differences of one sign: exact two-sided p = 2 / 2**5
    assert tests == {"softl1ace_dice_ce": pytest.approx(0.0625)}
    # one seed: no test
    one = {k: v.loc[[0]] for k, v in {"baseline_dice_ce": base, "x": better}.items()}
    assert D.summarise(one)[1] == {"x": None}
