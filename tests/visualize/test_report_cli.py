"""`calibseg report`: figures and the macro/micro table from bin_stats.npz."""

import torch
from typer.testing import CliRunner

from calibseg.binning import compute_bin_stats
from calibseg.cli.app import app
from calibseg.metrics import macro_micro_errors, save_bin_stats


def test_report_draws_and_prints(tmp_path):
    p = torch.rand(3, 3, 8, 8)
    y = (torch.rand_like(p) < p).float()
    y[0, 2] = 0
    stats = compute_bin_stats(p, y, 10)
    save_bin_stats(tmp_path / "bin_stats.npz", stats, ["p1", "p2", "p3"], ["bg", "liver", "lesion"])
    out = tmp_path / "figs"
    res = CliRunner().invoke(
        app, ["report", str(tmp_path), "--out", str(out), "--cases", "--no-background"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(f.name for f in out.iterdir()) == [
        "dataset_reliability_diagram.png",
        "p1_reliability_diagram.png",
        "p2_reliability_diagram.png",
        "p3_reliability_diagram.png",
    ]
    assert "liver" in res.output and "lesion" in res.output and "bg" not in res.output.split()
    errs = macro_micro_errors(stats.select_classes(slice(1, None)))
    assert f"{float(errs['micro']['ece'][0]):.4f}" in res.output
    assert f"{float(errs['macro']['mce'][1]):.4f}" in res.output


def test_report_missing_file(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code != 0
    assert isinstance(res.exception, FileNotFoundError)
    assert "bin_stats.npz" in str(res.exception)
