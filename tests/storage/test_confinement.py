"""Remote→local copies never write outside their destination (malicious keys on a real S3
server: moto on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import pytest

from calibseg import storage
from calibseg.storage import UnsafePathError, confined_path

CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")


def _put(endpoint: str, bucket: str, keys: dict[str, bytes]) -> None:
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for k, v in keys.items():
        c.put_object(Bucket=bucket, Key=k, Body=v)
    listed = {o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(keys) <= listed  # the server stores the keys verbatim (no normalisation)


def test_confined_path_by_hand(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    assert confined_path(dest, "a/b.txt") == str(dest / "a" / "b.txt")
    assert confined_path(dest, "a/../b.txt") == str(dest / "b.txt")  # stays inside: allowed
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\..\\x", "..", ".", "", "C:x"):
        with pytest.raises(UnsafePathError):
            confined_path(dest, bad)
    # a symbolic link inside the destination pointing out of it is followed, then refused
    os.symlink(tmp_path, dest / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        confined_path(dest, "link/escape.txt")


@pytest.mark.parametrize(
    ("keys", "prefix"),
    [
        ({"evil/ok.txt": b"ok", "evil/../../escape.txt": b"pwned"}, "evil"),
        ({"abs/ok.txt": b"ok", "abs//tmp/escape.txt": b"pwned"}, "abs"),
        ({"bs/ok.txt": b"ok", "bs/..\\..\\escape.txt": b"pwned"}, "bs"),
    ],
    ids=["dotdot", "absolute", "backslash"],
)
def test_storage_pull_refuses_escaping_keys_console_script(
    tmp_path, s3_bucket, moto_endpoint, keys, prefix
):
    _put(moto_endpoint, s3_bucket, keys)
    work = tmp_path / "a" / "b"
    dest = work / "dest"
    work.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    res = subprocess.run(
        [CALIBSEG, "storage", "pull", f"s3://{s3_bucket}/{prefix}", str(dest) + "/"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        cwd=work,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: refusing") and "Traceback" not in err
    # nothing was written anywhere: not the escaping file, not even the harmless one
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "a" / "escape.txt").exists()


def test_remote_run_mirror_refuses_planted_key(tmp_path, s3_bucket, moto_endpoint, monkeypatch):
    from calibseg import storage_mirror

    monkeypatch.setenv("CALIBSEG_CACHE", str(tmp_path / "cache"))
    run = f"s3://{s3_bucket}/bundles/b/seed_0"
    _put(
        moto_endpoint,
        s3_bucket,
        {
            "bundles/b/seed_0/checkpoints/last.pt": b"x",
            "bundles/b/seed_0/checkpoints/../../../../../escape.txt": b"pwned",
        },
    )
    local_run = tmp_path / "work" / "b" / "seed_0"
    (local_run / "logs").mkdir(parents=True)
    (local_run / "logs" / "keep.log").write_text("local log")
    with pytest.raises(UnsafePathError, match="outside"):
        storage_mirror.pull_run(run, str(local_run))
    assert not list(tmp_path.rglob("escape.txt"))
    # refused before anything local was touched
    assert (local_run / "logs" / "keep.log").read_text() == "local log"
    assert not (local_run / "checkpoints").exists()


def test_pull_library_call_copies_nothing_when_one_key_escapes(tmp_path, s3_bucket, moto_endpoint):
    _put(moto_endpoint, s3_bucket, {"p/a.txt": b"a", "p/../../../x.txt": b"x"})
    with pytest.raises(UnsafePathError):
        storage.pull(f"s3://{s3_bucket}/p", str(tmp_path / "d") + "/")
    assert not (tmp_path / "d").exists() and not list(tmp_path.rglob("x.txt"))
