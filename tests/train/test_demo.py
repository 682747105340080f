"""The demo: `calibseg demo` end to end at toy size, rerun, and refusal of other data sizes."""

import functools
import os

import pytest
from typer.testing import CliRunner

from calibseg.cli.app import app
from calibseg.evaluate import demo as D


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
        workers=None,
        extra_overrides={**extra, "data#split_fractions": [0.5, 0.17, 0.33]},
    )
    monkeypatch.setattr(D, "DemoSettings", tiny)
    out = str(tmp_path / "demo")
    args = ["demo", "--out", out, "--epochs", "1", "--cases", "6"]
    import torch

    threads = torch.get_num_threads()
    res = CliRunner().invoke(app, args, terminal_width=250)
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == threads  # one thread per run, restored afterwards
    assert "baseline_dice_ce" in res.output and "hardl1ace_dice_ce" in res.output
    assert "temperature" in res.output  # post-hoc rows beside the losses
    assert "±" not in res.output and "Holm" not in res.output  # one seed
    bundles = sorted(os.listdir(os.path.join(out, "bundles")))
    assert len(bundles) == 2
    for b in bundles:
        for run in ("seed_0", "seed_0_temperature"):
            fig = os.path.join(
                out, "bundles", b, run, "evaluation", "dataset_reliability_diagram.png"
            )
            assert os.path.isfile(fig)
            assert fig in res.output.replace("\n", "")
    assert os.path.isfile(os.path.join(out, "report.html"))
    # the bundles' ACE applies at full resolution only, the demo's stated regime
    import yaml

    train_cfg = yaml.safe_load(
        open(os.path.join(out, "bundles", bundles[1], "configs", "train.yaml"))
    )
    assert train_cfg["ace_at"] == "full"

    # rerunning reuses everything (runs are complete, evaluations exist)
    res2 = CliRunner().invoke(app, args, terminal_width=250)
    assert res2.exit_code == 0
    table = [ln for ln in res.output.splitlines() if "dice_ce" in ln]
    assert table == [ln for ln in res2.output.splitlines() if "dice_ce" in ln]
    # other sizes in the same folder: refused, nothing mixed
    res3 = CliRunner().invoke(app, [*args[:-1], "7"])
    assert res3.exit_code != 0 and "other synthetic data" in str(res3.exception)
