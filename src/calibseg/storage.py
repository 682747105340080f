"""Storage through fsspec: local paths and ``s3://`` URLs alike, with atomic writes.

Every reader and writer in calibseg goes through these helpers, so any path may be a URL.
Outputs are written to a temporary file next to the target and renamed (local) or uploaded
in one request after the data is complete (object stores), so a crash never leaves a half
file that looks whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "is_remote",
    "filesystem",
    "join",
    "exists",
    "isdir",
    "makedirs",
    "ls",
    "glob",
    "rm",
    "atomic_write",
    "local_output",
    "local_path",
    "read_bytes",
    "read_text",
    "write_bytes",
    "write_text",
    "read_json",
    "write_json",
]


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs with a non-local protocol (``s3://``, ``gs://``, ``memory://`` …)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _strip_file(path: str | os.PathLike) -> str:
    s = str(path)
    return s[len("file://") :] if s.startswith("file://") else s


def filesystem(path: str | os.PathLike):
    """``(fs, fs_path)`` for a path or URL (fsspec ``url_to_fs``)."""
    from fsspec.core import url_to_fs

    s = str(path)
    if is_remote(s):
        return url_to_fs(s, **_storage_options(s))
    return url_to_fs(os.path.abspath(_strip_file(s)))


def _storage_options(url: str) -> dict[str, Any]:
    """Options for remote filesystems (S3 endpoint and credentials from env or ``.env``)."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    from calibseg import storage_config

    return storage_config.s3_options()


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path components; keeps URLs as URLs."""
    s = str(base)
    if is_remote(s):
        out = s.rstrip("/")
        for p in parts:
            out = out + "/" + str(p).strip("/")
        return out
    return str(Path(_strip_file(s), *parts))


def exists(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    return bool(fs.exists(p))


def isdir(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    return bool(fs.isdir(p))


def makedirs(path: str | os.PathLike) -> None:
    """Create a folder (no-op for object stores, where folders are implicit)."""
    if is_remote(path):
        return
    os.makedirs(_strip_file(path), exist_ok=True)


def ls(path: str | os.PathLike) -> list[str]:
    """Sorted names (not full paths) of the entries directly under ``path``."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern, as full paths or URLs."""
    fs, p = filesystem(pattern)
    hits = sorted(fs.glob(p))
    if is_remote(pattern):
        proto = str(pattern).split("://", 1)[0]
        return [f"{proto}://{h}" for h in hits]
    return hits


def rm(path: str | os.PathLike, recursive: bool = False) -> None:
    fs, p = filesystem(path)
    fs.rm(p, recursive=recursive)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing; the file appears only when the block exits without error."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w', 'wt' and 'wb', got {mode!r}.")
    with local_output(path) as tmp, open(tmp, mode) as f:
        yield f


@contextmanager
def local_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """A local temporary file name to write to; moved (or uploaded) to ``path`` on success.

    For libraries that want a file name (nibabel, matplotlib, torch.save). The temporary
    file keeps the target's suffixes (e.g. ``.nii.gz``) so format detection works.
    """
    target = str(path)
    name = os.path.basename(target.rstrip("/"))
    if suffix is None:
        suffix = "".join(Path(name).suffixes)
    if is_remote(target):
        tmpdir = tempfile.mkdtemp(prefix="calibseg-")
        tmp = os.path.join(tmpdir, "part" + suffix)
        try:
            yield tmp
            fs, p = filesystem(target)
            fs.put_file(tmp, p)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return
    target = os.path.abspath(_strip_file(target))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cache_dir() -> str:
    d = os.environ.get("CALIBSEG_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "calibseg"
    )
    os.makedirs(d, exist_ok=True)
    return d


@contextmanager
def local_path(path: str | os.PathLike) -> Iterator[str]:
    """A local file name holding the content of ``path`` (downloaded into a cache if remote)."""
    s = str(path)
    if not is_remote(s):
        local = os.path.abspath(_strip_file(s))
        if not os.path.exists(local):
            raise FileNotFoundError(f"no such file: {s}")
        yield local
        return
    import hashlib

    fs, p = filesystem(s)
    try:
        info = fs.info(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {s}") from None
    tag = f"{s}|{info.get('size')}|{info.get('ETag') or info.get('etag') or info.get('mtime')}"
    key = hashlib.sha256(tag.encode()).hexdigest()[:24]
    name = os.path.basename(p)
    cached = os.path.join(_cache_dir(), key, name)
    if not os.path.exists(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".part")
        os.close(fd)
        try:
            fs.get_file(p, tmp)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    yield cached


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt JSON in {path}: {e}") from None


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
