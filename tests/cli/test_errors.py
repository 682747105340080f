"""One error path for every command: S3 failures in one line, internal errors marked as such,
--debug / CALIBSEG_DEBUG=1 show the traceback."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from calibseg.cli import common
from calibseg.cli.app import app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the block exits → connection refused


def test_unreachable_endpoint_is_one_line_for_every_command(cli, tmp_path):
    port = _closed_port()
    env = {
        "CALIBSEG_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "CALIBSEG_S3_MAX_ATTEMPTS": "1",
        "CALIBSEG_S3_CONNECT_TIMEOUT": "1",
    }
    b = "s3://some-bucket/bundles/synthetic_baseline_ce_12345678"
    commands = [
        ("train", b),
        ("predict", b),
        ("evaluate", b),
        ("bundle", "list", "--root", "s3://some-bucket/bundles"),
        ("bundle", "create", "--data", "synthetic", "--loss", "baseline_ce",
         "--data-root", str(tmp_path), "--out", "s3://some-bucket/bundles"),
    ]  # fmt: skip
    for args in commands:
        res = cli(*args, env=env, timeout=600)
        assert res.returncode == 1, (args, res.stderr)
        err = res.stderr.strip()
        assert err.count("\n") == 0, (args, err)
        assert "cannot reach the S3 endpoint" in err and str(port) in err, (args, err)
        assert "testing-secret-value" not in err


def test_wrong_credentials_name_the_cause_for_bundle_commands(
    cli, tmp_path, s3_bucket, moto_endpoint, monkeypatch
):
    import boto3
    import requests

    kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1")
    requests.post(moto_endpoint + "/moto-api/reset-auth", data=b"3", timeout=10)
    try:
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="u2")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="u2", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="u2")["AccessKey"]
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": "wrong-secret-x"}
        for args in (
            ("bundle", "list", "--root", f"s3://{s3_bucket}/bundles"),
            ("train", f"s3://{s3_bucket}/bundles/x"),
        ):
            res = cli(*args, env=env, timeout=600)
            err = res.stderr.strip()
            assert res.returncode == 1 and err.count("\n") == 0, (args, err)
            assert "AWS_SECRET_ACCESS_KEY" in err and "error: Forbidden" not in err, err
            assert "wrong-secret-x" not in err and key["AccessKeyId"] not in err
    finally:
        requests.post(moto_endpoint + "/moto-api/reset-auth", data=b"inf", timeout=10)


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("index 3 is out of bounds"), torch.cuda.OutOfMemoryError("CUDA out of memory.")],
    ids=["runtime", "cuda-oom"],
)
def test_internal_errors_are_not_user_errors(exc, tmp_path, monkeypatch, capsys):
    from calibseg import storage

    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(storage, "list_files", broken)
    monkeypatch.delenv("CALIBSEG_DEBUG", raising=False)
    rc = common.run_app(app, ["storage", "ls", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert f"internal error ({type(exc).__name__})" in err and "--debug" in err
    assert "Traceback" not in err

    monkeypatch.setenv("CALIBSEG_DEBUG", "1")
    rc = common.run_app(app, ["storage", "ls", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback (most recent call last)" in err and "broken" in err


def test_debug_option_shows_traceback_through_console_script(cli, tmp_path):
    missing = str(tmp_path / "nothing")
    res = cli("storage", "ls", missing)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    res = cli("--debug", "storage", "ls", missing)
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: no such file or folder")
    res = cli("storage", "ls", missing, env={"CALIBSEG_DEBUG": "1"})
    assert "Traceback (most recent call last)" in res.stderr


def test_evaluate_hint_names_a_real_predict_option(tmp_path, capsys):
    import typer.main

    from calibseg.evaluate import evaluate_run

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "data.yaml").write_text("dataset: synthetic\nclass_names: [bg, fg]\n")
    item = {"case": "c1", "image": "i.nii.gz", "label": "l.nii.gz"}
    (bundle / "splits.json").write_text(json.dumps({"test": [item]}))
    predict = typer.main.get_command(app).commands["predict"]
    options = {o for p in predict.params for o in p.opts}
    for run, expected in (("seed_3", "--seed 3"), ("rater1_seed11", "--run-name rater1_seed11")):
        with pytest.raises(FileNotFoundError) as e:
            evaluate_run(str(bundle), run_name=run)
        assert f"calibseg predict {bundle} {expected}" in str(e.value)
        assert expected.split()[0] in options
