"""Storage configuration: .env loading and credential redaction (no server needed)."""

from __future__ import annotations

from calibseg import storage_config
from calibseg.storage_config import redact


def test_dotenv_provides_options_without_overriding_environment(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text(
        "CALIBSEG_S3_ENDPOINT_URL=http://127.0.0.1:9000\nAWS_ACCESS_KEY_ID=AKIAFROMFILE\n"
        "AWS_SECRET_ACCESS_KEY=file-secret\nAWS_DEFAULT_REGION=eu-west-1\n"
    )
    for k in storage_config.ENV_KEYS + ("AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")  # environment wins over .env
    monkeypatch.setenv("CALIBSEG_ENV_FILE", str(env))
    monkeypatch.setattr(storage_config, "_LOADED", False)
    opts = storage_config.s3_options()
    assert opts["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "us-east-2",
    }
    assert opts["key"] == "AKIAFROMFILE" and opts["secret"] == "file-secret"
    shown = redact(opts)
    assert shown["key"] == shown["secret"] == "***"
    assert shown["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert "file-secret" not in str(shown) and "AKIAFROMFILE" not in str(shown)


def test_redact_urls_and_nested_configs(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE1")
    assert redact("s3://AKIA:pw@bucket/key") == "s3://***@bucket/key"
    signed = "https://h/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&x=1"
    assert redact(signed) == "https://h/b/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1"
    cfg = {"data": {"root": "s3://b/d", "aws_secret": "x"}, "log": ["used s3cr3t-value"], "n": 3}
    out = redact(cfg)
    assert out == {"data": {"root": "s3://b/d", "aws_secret": "***"}, "log": ["used ***"], "n": 3}
    assert cfg["data"]["aws_secret"] == "x"  # the input is not modified
    assert redact("plain text AKIAEXAMPLE1") == "plain text ***"
