"""Training options shared by `calibseg nnunet train` and `ensemble train` (no nnU-Net needed)."""

import sys

import pytest
from typer.testing import CliRunner

import calibseg.nnunet as nn_pkg
from calibseg.cli.app import app
from calibseg.nnunet.options import TrainOptions


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", -1, "seed must be >= 0"),
        ("patience", -2, "patience and min_delta must be >= 0"),
        ("min_delta", -0.1, "patience and min_delta must be >= 0"),
        ("ace_weight", float("nan"), "ace_weight must be >= 0"),
        ("num_bins", 0, "num_bins must be >= 1"),
        ("epochs", 0, "epochs must be >= 1"),
        ("iterations_per_epoch", 0, "iterations_per_epoch must be >= 1"),
        ("val_iterations_per_epoch", 0, "val_iterations_per_epoch must be >= 1"),
    ],
)
def test_out_of_range_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainOptions(**{field: value})


def test_both_commands_offer_the_same_training_options():
    shared = {"--loss", "--patience", "--min-delta", "--ace-weight", "--num-bins", "--epochs"}
    shared |= {"--iterations", "--val-iterations", "--device", "--validate"}
    for args in (["nnunet", "train", "--help"], ["nnunet", "ensemble", "train", "--help"]):
        res = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert res.exit_code == 0
        assert all(opt in res.output for opt in shared), res.output
        assert "--run" not in res.output


def test_options_reach_the_runner(monkeypatch):
    """What the command hands the runner, with nnU-Net's runner replaced by a recorder."""
    seen = {}

    class Runner:
        @staticmethod
        def train(*args, **kwargs):
            seen.update(args=args, **kwargs)
            return "fold_0"

    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: True)
    monkeypatch.setitem(sys.modules, "calibseg.nnunet.runner", Runner)
    args = ["nnunet", "train", "501", "3d_fullres", "0", "--seed", "7", "--patience", "20"]
    args += ["--iterations", "5", "--loss", "softl1ace", "--no-validate"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert seen["args"] == (501, "3d_fullres", "0")
    assert seen["loss"] == "softl1ace" and seen["validate"] is False and seen["device"] == "cpu"
    assert seen["options"] == TrainOptions(seed=7, patience=20, iterations_per_epoch=5)


def test_bad_option_is_one_line_through_the_console_script(tmp_path, error_line):
    line = error_line(
        ["nnunet", "ensemble", "train", "ens", "--id", "501", "--num-bins", "0"], tmp_path
    )
    assert "num_bins must be >= 1" in line
    assert not (tmp_path / "ens").exists()
