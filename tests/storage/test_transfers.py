"""push / pull / ls / rm against a real S3 HTTP server (moto on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest
from typer.testing import CliRunner

from calibseg import storage
from calibseg.cli.app import app

runner = CliRunner()
MIB = 2**20


def _tree(root, big: int = 0) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3000), "sub/deep/c.json": b"{}"}
    if big:
        files["big.bin"] = os.urandom(big)
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return files


def _client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_push_pull_roundtrip_skips_identical_incl_multipart(tmp_path, s3_bucket, moto_endpoint):
    src = tmp_path / "src"
    files = _tree(src, big=11 * MIB)  # ≥ 2 parts of 5 MiB → multipart upload (3 parts)
    url = f"s3://{s3_bucket}/data"
    res = runner.invoke(app, ["storage", "push", str(src), url, "--part-size", "5"])
    assert res.exit_code == 0, res.output
    assert "uploaded 4 file(s)" in res.output

    listed = {e["rel"]: e for e in storage.list_files(url)}
    assert set(listed) == set(files)
    # the multipart ETag is MD5(concat(part MD5s))-3, reproduced locally with the same part size
    parts = [
        hashlib.md5(files["big.bin"][i : i + 5 * MIB]).digest() for i in range(0, 11 * MIB, 5 * MIB)
    ]
    expected = hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert listed["big.bin"]["etag"] == expected == storage.file_etag(src / "big.bin", 5 * MIB)
    head = _client(moto_endpoint).head_object(Bucket=s3_bucket, Key="data/big.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(files["big.bin"]).hexdigest()

    res = runner.invoke(app, ["storage", "push", str(src), url, "--part-size", "5"])
    assert "uploaded 0 file(s)" in res.output and "skipped 4" in res.output

    # same size, new content → re-uploaded, the rest skipped
    (src / "a.txt").write_bytes(b"ALPHA\n")
    r = storage.push(src, url, part_size=5 * MIB)
    assert r.copied == ["a.txt"] and len(r.skipped) == 3

    # pushed with another part size: the ETag no longer matches, the sha256 metadata does
    r = storage.push(src, url, part_size=6 * MIB)
    assert r.copied == [] and len(r.skipped) == 4

    dst = tmp_path / "dst"
    res = runner.invoke(app, ["storage", "pull", url, str(dst)])
    assert res.exit_code == 0, res.output
    for rel, data in files.items():
        expect = b"ALPHA\n" if rel == "a.txt" else data
        assert (dst / rel).read_bytes() == expect
    r = storage.pull(url, dst)
    assert r.copied == [] and len(r.skipped) == 4
    assert not list(dst.rglob("*.part"))


@pytest.mark.slow
def test_listing_paginates_beyond_1000_keys_and_rm_requires_yes(tmp_path, s3_bucket, moto_endpoint):
    n = 1050
    # seed the (in-process) server's store directly: 1,050 HTTP PUTs would take ~10 s here
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(n):
        backend.put_object(s3_bucket, f"many/k{i:05d}.txt", b"x" * (i % 7))
    client = _client(moto_endpoint)
    page = client.list_objects_v2(Bucket=s3_bucket, Prefix="many/")
    assert page["IsTruncated"] and page["KeyCount"] == 1000  # the server pages at 1,000

    files = storage.list_files(f"s3://{s3_bucket}/many")
    assert len(files) == n and files[-1]["rel"] == f"k{n - 1:05d}.txt"
    assert sum(e["size"] for e in files) == sum(i % 7 for i in range(n))
    res = runner.invoke(app, ["storage", "ls", f"s3://{s3_bucket}/many/"])
    assert res.exit_code == 0 and f"{n} file(s)" in res.output

    res = runner.invoke(app, ["storage", "rm", f"s3://{s3_bucket}/many"])
    assert res.exit_code == 1
    assert res.output.count("would delete") == n and "without --yes" in res.output
    assert len(storage.list_files(f"s3://{s3_bucket}/many")) == n  # nothing deleted

    res = runner.invoke(app, ["storage", "rm", f"s3://{s3_bucket}/many", "--yes"])
    assert res.exit_code == 0 and f"deleted {n} file(s)" in res.output
    assert client.list_objects_v2(Bucket=s3_bucket, Prefix="many/")["KeyCount"] == 0


def test_interrupted_push_fails_cleanly_and_retry_completes(tmp_path, s3_bucket, monkeypatch):
    from botocore.exceptions import ConnectionClosedError

    src = tmp_path / "src"
    files = _tree(src)
    url = f"s3://{s3_bucket}/run"
    fs, _ = storage.filesystem(url)
    real_put = fs.put_file  # s3fs instances are cached: calibseg gets this same object
    calls = {"n": 0}

    def flaky(lpath, rpath, **kw):  # the connection drops during the 2nd upload
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionClosedError(endpoint_url="http://127.0.0.1")
        return real_put(lpath, rpath, **kw)

    monkeypatch.setattr(fs, "put_file", flaky)
    res = runner.invoke(app, ["storage", "push", str(src), url])
    assert res.exit_code != 0
    assert isinstance(res.exception, ConnectionError)
    assert "interrupted" in str(res.exception) and "\n" not in str(res.exception)
    assert len(storage.list_files(url)) == 1  # only the completed object exists

    monkeypatch.setattr(fs, "put_file", real_put)
    res = runner.invoke(app, ["storage", "push", str(src), url])
    assert res.exit_code == 0 and "uploaded 2 file(s)" in res.output and "skipped 1" in res.output
    assert {e["rel"] for e in storage.list_files(url)} == set(files)


def test_missing_bucket_and_refused_connection_are_one_line_errors(s3_bucket, monkeypatch):
    res = runner.invoke(app, ["storage", "ls", "s3://no-such-bucket-xyz/a"])
    assert res.exit_code != 0 and isinstance(res.exception, FileNotFoundError)
    assert "bucket 'no-such-bucket-xyz' does not exist" in str(res.exception)

    res = runner.invoke(app, ["storage", "ls", f"s3://{s3_bucket}/nothing-here"])
    assert isinstance(res.exception, FileNotFoundError)
    assert "no such file or folder" in str(res.exception)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block exits → connection refused
    monkeypatch.setenv("CALIBSEG_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CALIBSEG_S3_MAX_ATTEMPTS", "1")
    res = runner.invoke(app, ["storage", "ls", f"s3://{s3_bucket}/x"])
    assert isinstance(res.exception, ConnectionError)
    msg = str(res.exception)
    assert "cannot reach the S3 endpoint" in msg and str(port) in msg and "\n" not in msg


def test_wrong_credentials_rejected_without_leaking_them(
    tmp_path, s3_bucket, moto_endpoint, monkeypatch
):
    import json

    import requests

    kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1")
    requests.post(moto_endpoint + "/moto-api/reset-auth", data=b"3", timeout=10)
    try:
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="u")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="u", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="u")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        storage.write_text(f"s3://{s3_bucket}/ok.txt", "fine")
        assert storage.read_text(f"s3://{s3_bucket}/ok.txt") == "fine"

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
        res = runner.invoke(app, ["storage", "ls", f"s3://{s3_bucket}/"])
        assert res.exit_code != 0 and isinstance(res.exception, PermissionError)
        msg = str(res.exception)
        assert "AWS_SECRET_ACCESS_KEY" in msg and "definitely-wrong-secret" not in msg
        assert key["AccessKeyId"] not in msg
    finally:
        requests.post(moto_endpoint + "/moto-api/reset-auth", data=b"inf", timeout=10)


def test_cli_error_is_one_red_line_and_nonzero_exit(s3_bucket, monkeypatch):
    """Through the real entry point: user errors print one line on stderr, exit code 1."""
    import sys

    from calibseg.cli import common
    from calibseg.cli.app import main

    lines: list[str] = []
    monkeypatch.setattr(common.err_console, "print", lambda m, **k: lines.append(m))
    monkeypatch.setattr(sys, "argv", ["calibseg", "storage", "rm", f"s3://{s3_bucket}/missing"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    assert len(lines) == 1 and "no such file or folder" in lines[0]


def test_remote_reads_go_through_cache_and_writes_are_atomic(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3_bucket}/f/x.bin"
    storage.write_bytes(url, b"abc")
    with storage.local_path(url) as p:
        assert p.startswith(str(tmp_path / "cache")) and open(p, "rb").read() == b"abc"
    storage.write_bytes(url, b"abcd")  # new size/ETag → new cache entry
    with storage.local_path(url) as p:
        assert open(p, "rb").read() == b"abcd"

    with pytest.raises(RuntimeError), storage.local_output(f"s3://{s3_bucket}/f/half.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("crash while writing")
    assert not storage.exists(f"s3://{s3_bucket}/f/half.bin")


def test_interrupted_pull_leaves_no_partial_file_and_retry_completes(
    tmp_path, s3_bucket, monkeypatch
):
    from botocore.exceptions import ResponseStreamingError

    src = tmp_path / "src"
    files = _tree(src)
    url = f"s3://{s3_bucket}/p"
    storage.push(src, url)
    fs, _ = storage.filesystem(url)
    real_get = fs.get_file

    def broken(rpath, lpath, **kw):  # half the bytes arrive, then the stream breaks
        with open(lpath, "wb") as f:
            f.write(b"half")
        raise ResponseStreamingError(error="connection reset")

    monkeypatch.setattr(fs, "get_file", broken)
    dst = tmp_path / "dst"
    with pytest.raises(ConnectionError, match="interrupted"):
        storage.pull(url, dst)
    assert not [p for p in dst.rglob("*") if p.is_file()]  # no partial file under any name
    monkeypatch.setattr(fs, "get_file", real_get)
    r = storage.pull(url, dst)
    assert sorted(r.copied) == sorted(files)
    assert all((dst / rel).read_bytes() == data for rel, data in files.items())
