"""Choice options (--region, --method, --strategy) are typer Enums: listed in --help and checked
before any work, through the installed console script and typer's runner alike."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from calibseg.cli.app import app

CASES = [
    (
        ("metrics", "compute", "--pred", "p", "--raters", "r", "--region", "nowhere"),
        "--region",
        ("whole", "body", "dilated"),
    ),
    (
        ("ensemble", "combine", "--bundle", "b", "--method", "median"),
        "--method",
        ("mean", "logit-mean", "weighted"),
    ),
    (
        ("ensemble", "combine", "--bundle", "b", "--strategy", "s1=a,b"),
        "--strategy",
        ("global", "per-rater"),
    ),
]


@pytest.mark.parametrize("args,option,choices", CASES, ids=[c[1] for c in CASES])
def test_unknown_choice_is_a_usage_error(cli, args, option, choices):
    res = cli(*args)
    assert res.returncode == 2, res.stderr
    assert f"Invalid value for '{option}'" in res.stderr and "Traceback" not in res.stderr
    assert all(c in res.stderr for c in choices), res.stderr
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 2 and "Invalid value" in r.output


def test_help_lists_the_choices():
    wide = {"TERMINAL_WIDTH": "200", "COLUMNS": "200"}
    r = CliRunner().invoke(app, ["ensemble", "combine", "--help"], env=wide)
    assert r.exit_code == 0
    assert "mean|logit-mean|weighted" in r.output and "global|per-rater" in r.output
    r = CliRunner().invoke(app, ["metrics", "compute", "--help"], env=wide)
    assert "whole|body|dilated" in r.output


def test_group_and_strategy_together_are_refused(cli, tmp_path):
    (tmp_path / "b").mkdir()
    args = ["--bundle", str(tmp_path / "b"), "--strategy", "per-rater", "--group", "s1=a"]
    res = cli("ensemble", "combine", *args)
    assert res.returncode == 1
    assert "--group replaces --strategy: give one of the two." in res.stderr
