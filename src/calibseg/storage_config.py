"""S3 settings from the environment or a ``.env`` file; credentials never leave memory.

Keys (all optional; see ``.env.example``):

- ``CALIBSEG_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``): S3-compatible endpoint, e.g. MinIO.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (+ optional ``AWS_SESSION_TOKEN``).
- ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``).
- ``CALIBSEG_ENV_FILE``: path of the ``.env`` file to read (default ``./.env``).

Use :func:`redact` before printing or storing any URL or configuration.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["s3_options", "load_dotenv_once", "redact", "ENV_KEYS", "endpoint_url"]

_LOADED = False

ENV_KEYS: tuple[str, ...] = (
    "CALIBSEG_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
)
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SECRET_KEY_RE = re.compile(
    r"(secret|password|passwd|token|credential|signature|^key$|access_?key)", re.I
)
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_QUERY_RE = re.compile(
    r"(?P<k>(X-Amz-(Credential|Signature|Security-Token)|AWSAccessKeyId|Signature|"
    r"access_key|secret_key|token)=)[^&\s]+",
    re.I,
)
MASK = "***"


def load_dotenv_once() -> None:
    """Read ``$CALIBSEG_ENV_FILE`` or ``./.env`` (if any) without overriding the environment."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    path = os.environ.get("CALIBSEG_ENV_FILE") or os.path.join(os.getcwd(), ".env")
    if os.path.exists(path):
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def endpoint_url() -> str | None:
    """The configured S3 endpoint URL (``None`` = AWS default)."""
    load_dotenv_once()
    return os.environ.get("CALIBSEG_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs options: endpoint ``CALIBSEG_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``),
    keys ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, region ``AWS_DEFAULT_REGION``.

    Listings are not cached (other processes, e.g. Dask workers, write to the same bucket),
    and connection attempts are bounded so an unreachable endpoint fails within seconds.
    """
    load_dotenv_once()
    env = os.environ
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = endpoint_url()
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    opts["config_kwargs"] = {
        "connect_timeout": float(env.get("CALIBSEG_S3_CONNECT_TIMEOUT", "5")),
        "read_timeout": float(env.get("CALIBSEG_S3_READ_TIMEOUT", "60")),
        "retries": {
            "max_attempts": int(env.get("CALIBSEG_S3_MAX_ATTEMPTS", "3")),
            "mode": "standard",
        },
    }
    return opts


def _secret_values() -> list[str]:
    vals = [os.environ.get(k, "") for k in _SECRET_ENV]
    return sorted({v for v in vals if len(v) >= 4}, key=len, reverse=True)


def redact(obj: Any) -> Any:
    """Copy of ``obj`` (str, URL, dict, list) with credentials masked as ``***``.

    Masks URL user-info (``s3://KEY:SECRET@bucket``), signed-URL query parameters, dict
    entries whose key names a secret (``secret``, ``token``, ``key``, ``password`` …) and any
    occurrence of the configured access key, secret or session token.
    """
    if isinstance(obj, dict):
        return {
            k: (MASK if isinstance(k, str) and _SECRET_KEY_RE.search(k) and v else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        s = _USERINFO_RE.sub(lambda m: m.group("scheme") + MASK + "@", obj)
        s = _QUERY_RE.sub(lambda m: m.group("k") + MASK, s)
        for v in _secret_values():
            s = s.replace(v, MASK)
        return s
    return obj
