"""Test-wide settings: headless matplotlib, few threads, deterministic seeds."""

import os

# under pytest-xdist (make test: one worker process per core) each worker gets one thread
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(THREADS, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def calibrated():
    """Factory ``calibrated(b, c, shape, seed, scale) → (probs, onehot)``: softmax of Gaussian
    logits ``[B, C, *shape]`` and one-hot labels drawn from those probabilities (a calibrated
    model's output), float32."""

    def make(b: int = 3, c: int = 3, shape=(8, 8), seed: int = 0, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        p = torch.softmax(torch.randn(b, c, *shape, generator=g) * scale, 1)
        lab = torch.distributions.Categorical(probs=p.movedim(1, -1)).sample()
        return p, torch.nn.functional.one_hot(lab, c).movedim(-1, 1).float()

    return make


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's threaded S3-compatible HTTP server on a free port of 127.0.0.1; yields its URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_SECRET = "testing-secret-value"


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """Point calibseg at the moto server (env vars) and create a fresh bucket; yield its name."""
    import uuid

    import boto3

    monkeypatch.setenv("CALIBSEG_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = "b-" + uuid.uuid4().hex[:12]
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing-key-id",
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return bucket


TINY_OVERRIDES = {
    "common#roi_size": [16, 16, 16],
    "common#network_def#init_filters": 4,
    "common#deep_supervision_depth": 2,
    "common#network_def#blocks_down": [1, 1, 1],
    "train#max_epochs": 2,
}


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """Bundle overrides for a network and patch small enough for a few-second CPU run."""
    return dict(TINY_OVERRIDES)
