"""`calibseg train` and `calibseg predict` through typer's CliRunner."""

import os

from typer.testing import CliRunner

from calibseg.cli.app import app


def test_train_resume_and_predict_commands(tiny_bundle, trained):
    runner = CliRunner()
    # the 2-epoch run is complete: rerunning the command resumes and has nothing left to do
    last = os.path.join(trained, "checkpoints", "last.pt")
    before = os.stat(last).st_mtime_ns
    res = runner.invoke(app, ["train", tiny_bundle, "--seed", "0"], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "trained" in res.output and os.stat(last).st_mtime_ns == before

    res = runner.invoke(
        app, ["predict", tiny_bundle, "--seed", "0", "--checkpoint", "final"], terminal_width=250
    )
    assert res.exit_code == 0, res.output
    pred = os.path.join(trained, "predictions")
    assert "predictions" in res.output and any(n.endswith("_prob.nii.gz") for n in os.listdir(pred))

    res = runner.invoke(app, ["predict", tiny_bundle, "--seed", "9"])
    assert res.exit_code != 0 and "no checkpoint" in str(res.exception)


def test_train_command_new_run(tiny_bundle):
    res = CliRunner().invoke(
        app,
        [
            "train",
            tiny_bundle,
            "--seed",
            "1",
            "--max-epochs",
            "1",
            "--run-name",
            "cli_r2",
            "--rater",
            "2",
        ],
        terminal_width=250,
    )
    assert res.exit_code == 0, res.output
    run = os.path.join(tiny_bundle, "cli_r2")
    assert os.path.isfile(os.path.join(run, "checkpoints", "final.pt"))
    import json

    resolved = json.load(open(os.path.join(run, "resolved_config.json")))
    assert resolved["run"]["rater"] == 2 and resolved["run"]["seed"] == 1
