"""S3 settings from the environment or a ``.env`` file; credentials never leave memory."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["s3_options", "load_dotenv_once"]

_LOADED = False


def load_dotenv_once() -> None:
    """Read ``.env`` from the working directory (if any) without overriding the environment."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    path = os.path.join(os.getcwd(), ".env")
    if os.path.exists(path):
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs options: endpoint ``CALIBSEG_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``),
    keys ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, region ``AWS_DEFAULT_REGION``."""
    load_dotenv_once()
    env = os.environ
    opts: dict[str, Any] = {}
    endpoint = env.get("CALIBSEG_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
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
    return opts
