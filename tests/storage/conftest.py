"""A real S3-compatible HTTP server (moto) on 127.0.0.1 for the storage tests."""

from __future__ import annotations

import socket
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """Start moto's threaded S3 server on a random free port; yield its URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Point calibseg at the moto server (env vars) and create a fresh bucket; yield its name."""
    import boto3

    monkeypatch.setenv("CALIBSEG_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = "b-" + uuid.uuid4().hex[:12]
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret-value",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return bucket
