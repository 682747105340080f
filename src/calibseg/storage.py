"""Storage through fsspec: local paths and ``s3://`` URLs alike, with atomic writes.

Every reader and writer in calibseg goes through these helpers, so any path may be a URL.
Outputs are written to a temporary file next to the target and renamed (local) or uploaded
in one request after the data is complete (object stores), so a crash never leaves a half
file that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from calibseg.storage_config import redact

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
    "redact",
    "friendly_errors",
    "describe_remote_error",
    "UnsafePathError",
    "confined_path",
    "PART_SIZE",
    "file_etag",
    "file_sha256",
    "list_files",
    "TransferResult",
    "push",
    "pull",
    "remove",
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
            with friendly_errors(target):
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
        _publish(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            # name the file the user asked for, not the temporary one (e.g. disk full)
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), target) from e
        raise


def _publish(tmp: str, target: str) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and
    rename it onto ``target`` in one step."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


class UnsafePathError(ValueError):
    """A remote key that would be written outside its local destination folder."""


def confined_path(dest: str | os.PathLike, rel: str) -> str:
    """The local path of ``rel`` (a key relative to a remote prefix) under folder ``dest``.

    Every remote→local copy goes through this check. The target is resolved (``..`` and
    symbolic links followed) and must lie strictly inside ``dest``.

    Raises:
        UnsafePathError: ``rel`` is empty, absolute (``/x``, ``C:x``), contains a backslash or
            a NUL byte, or resolves outside ``dest``.
    """
    text = str(rel)
    shown = repr(redact(text))
    if not text or text in (".", "/"):
        raise UnsafePathError(f"refusing an empty object key for {dest}.")
    if "\\" in text or "\0" in text:
        raise UnsafePathError(
            f"refusing object key {shown}: backslashes and NUL bytes are not allowed in keys "
            "copied to a local folder."
        )
    if text.startswith("/") or os.path.isabs(text) or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"refusing absolute object key {shown} (destination {dest}).")
    root = os.path.realpath(os.path.abspath(_strip_file(str(dest))))
    target = os.path.realpath(os.path.join(root, text))
    if os.path.commonpath([root, target]) != root or target == root:
        raise UnsafePathError(
            f"refusing object key {shown}: it would be written outside {dest} (to {target})."
        )
    return target


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
    with friendly_errors(s):
        fs, p = filesystem(s)
        try:
            info = fs.info(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {redact(s)}") from None
    tag = f"{s}|{info.get('size')}|{info.get('ETag') or info.get('etag') or info.get('mtime')}"
    key = hashlib.sha256(tag.encode()).hexdigest()[:24]
    cached = confined_path(os.path.join(_cache_dir(), key), os.path.basename(p.rstrip("/")))
    if not os.path.exists(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".part")
        os.close(fd)
        try:
            with friendly_errors(s):
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


# --------------------------------------------------------------------------- transfers
#
# Skip-if-identical: an object is identical to a local file when the sizes match and
# (a) its ETag equals the ETag computed locally with the same upload rule s3fs uses
#     (one PUT → MD5 of the bytes; multipart with part size P → MD5 of the parts' binary
#     MD5s + "-<n parts>"; files of at least 2·P bytes are sent as multipart), or
# (b) its ``x-amz-meta-sha256`` metadata (written by :func:`push` on every upload) equals
#     the local SHA-256 — used when the ETag was made with another part size or is not an
#     MD5 (e.g. server-side encryption with KMS).
# Listing gives size + ETag for free, so (a) costs no request per object; (b) one HEAD.

PART_SIZE = 8 * 2**20
_ETAG_PART_SIZES = (5 * 2**20, 8 * 2**20, 16 * 2**20, 50 * 2**20, 64 * 2**20)
_READ_BLOCK = 2**20


def _md5_ranges(path: str, part_size: int) -> list[bytes]:
    digests = []
    with open(path, "rb") as f:
        while True:
            h = hashlib.md5()
            left = part_size
            while left > 0:
                block = f.read(min(_READ_BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            if left == part_size and digests:
                break
            digests.append(h.digest())
            if left > 0:
                break
    return digests


def file_etag(path: str | os.PathLike, part_size: int = PART_SIZE) -> str:
    """The S3 ETag an upload of local ``path`` by :func:`push` (s3fs) gets, without quotes.

    Files smaller than ``2 * part_size`` go in one PUT (ETag = MD5 hex); larger ones in parts
    of ``part_size`` bytes (ETag = MD5 of the concatenated part MD5s, ``-<n parts>``).
    """
    size = os.path.getsize(path)
    if size < 2 * part_size:
        return _md5_ranges(str(path), max(size, 1))[0].hex()
    parts = _md5_ranges(str(path), part_size)
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a local file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _etag_matches(local: str, etag: str, default_part: int) -> bool:
    etag = etag.strip('"')
    if not etag:
        return False
    size = os.path.getsize(local)
    if "-" not in etag:
        return size < 2**31 and file_etag(local, part_size=max(size, 1)) == etag
    n = int(etag.rsplit("-", 1)[1])
    candidates = [default_part, *_ETAG_PART_SIZES]
    seen = set()
    for ps in candidates:
        if ps in seen or -(-size // ps) != n:
            continue
        seen.add(ps)
        parts = _md5_ranges(local, ps)
        if f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}" == etag:
            return True
    return False


def _error_message(exc: BaseException, url: str | None) -> str | None:
    """A one-line explanation for a storage failure, or None if not a storage error."""
    from calibseg import storage_config

    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    where = redact(url) if url else "the S3 object"
    endpoint = redact(storage_config.endpoint_url() or "the AWS default endpoint")
    if any(
        k in low
        for k in (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "invalidclienttokenid",
            "unrecognizedclient",
            "nocredentials",
            "unable to locate credentials",
            "expiredtoken",
            "the aws access key id",
        )
    ):
        return (
            f"S3 rejected the credentials for {where}: check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (environment or .env)."
        )
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket" in low:
        if not url:
            return f"the S3 bucket does not exist at {endpoint} (create it or fix the URL)."
        bucket = where.split("://", 1)[-1].split("/", 1)[0]
        return f"S3 bucket '{bucket}' does not exist at {endpoint} (create it or fix the URL)."
    if "accessdenied" in low or "access denied" in low or isinstance(exc, PermissionError):
        return (
            f"access denied to {where}: wrong credentials or missing permission "
            "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment or .env)."
        )
    if any(
        k in low
        for k in (
            "could not connect",
            "connection refused",
            "endpointconnectionerror",
            "cannot connect",
            "connect timeout",
            "connecttimeout",
            "name or service",
        )
    ):
        return (
            f"cannot reach the S3 endpoint {endpoint} (connection refused or timed out): "
            "check CALIBSEG_S3_ENDPOINT_URL and the network."
        )
    if any(
        k in low
        for k in (
            "incompleteread",
            "connection was closed",
            "read timeout",
            "responsestreamingerror",
            "clientpayloaderror",
        )
    ):
        return f"transfer of {where} was interrupted ({type(exc).__name__}); rerun to resume."
    return None


def describe_remote_error(exc: BaseException) -> str | None:
    """One line (no credentials) for an S3/network failure raised by s3fs/botocore anywhere,
    e.g. an unreachable endpoint, rejected credentials ("Forbidden") or a missing bucket;
    None when ``exc`` is not such a failure."""
    return _error_message(exc, None)


@contextmanager
def friendly_errors(url: str) -> Iterator[None]:
    """Turn S3/network failures into one-line errors (credentials never in the message).

    Raises PermissionError (credentials/access), FileNotFoundError (missing bucket),
    ConnectionError (unreachable endpoint, interrupted transfer); other errors pass through.
    """
    try:
        yield
    except FileNotFoundError as e:
        msg = _error_message(e, url)
        if msg:
            raise FileNotFoundError(msg) from None
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - classified below, re-raised otherwise
        msg = _error_message(e, url)
        if msg is None:
            raise
        low = msg.lower()
        if "does not exist" in low:
            raise FileNotFoundError(msg) from None
        if "credentials" in low or "access denied" in low:
            raise PermissionError(msg) from None
        raise ConnectionError(msg) from None


def _url(fs, path: str, proto: str | None) -> str:
    return f"{proto}://{path}" if proto else path


def list_files(url: str | os.PathLike, recursive: bool = True) -> list[dict[str, Any]]:
    """Files under ``url`` (a folder/prefix or a single file), sorted by path.

    Returns dicts ``{"path": full path/URL, "rel": path relative to url, "size": bytes,
    "etag": str or ""}``. Object-store listings follow continuation tokens, so any number of
    keys is returned (S3 pages hold at most 1,000).
    """
    s = str(url)
    with friendly_errors(s):
        fs, p = filesystem(s)
        proto = s.split("://", 1)[0] if is_remote(s) else None
        p = p.rstrip("/")
        info = _probe(fs, p, s)
        if info["type"] == "file":
            return [_entry(info, os.path.dirname(p), proto)]
        found = fs.find(p, maxdepth=None if recursive else 1, detail=True)
    return sorted(
        (_entry(info, p, proto) for info in found.values() if info.get("type") != "directory"),
        key=lambda e: e["rel"],
    )


def _probe(fs, p: str, url: str) -> dict:
    """``fs.info`` that tells a missing bucket from a missing key and lets auth errors through."""
    try:
        return fs.info(p)
    except FileNotFoundError:
        pass
    if is_remote(url):
        bucket = p.split("/", 1)[0]
        try:
            fs.info(bucket)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"S3 bucket '{bucket}' does not exist (create it or fix the URL {redact(url)})."
            ) from None
    raise FileNotFoundError(f"no such file or folder: {redact(url)}")


def _entry(info: dict, base: str, proto: str | None) -> dict[str, Any]:
    name = info["name"]
    # strip only the one separator after the prefix: "prefix//etc/x" stays absolute ("/etc/x")
    # so that confined_path refuses it instead of silently renaming it
    rel = name[len(base) :] if name.startswith(base) else os.path.basename(name)
    rel = rel[1:] if rel.startswith("/") and base else rel
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return {"path": _url(None, name, proto), "rel": rel, "size": int(info["size"]), "etag": etag}


@dataclass
class TransferResult:
    """What a push/pull did: relative paths copied and skipped, bytes sent."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def _byte_callback(on_bytes):
    from fsspec.callbacks import Callback

    class _Forward(Callback):
        def call(self, *args, **kwargs):
            delta = self.value - self._last
            self._last = self.value
            if delta > 0 and on_bytes is not None:
                on_bytes(delta)

        def relative_update(self, inc=1):
            self.value += inc
            self.call()

        def absolute_update(self, value):
            self.value = value
            self.call()

    cb = _Forward()
    cb._last = 0
    return cb


def _plan(sources: list[dict], dest_index: dict[str, dict], same) -> tuple[list[dict], list[dict]]:
    todo, skip = [], []
    for e in sources:
        d = dest_index.get(e["rel"])
        (skip if d is not None and d["size"] == e["size"] and same(e, d) else todo).append(e)
    return todo, skip


def push(
    src: str | os.PathLike,
    dst: str,
    part_size: int = PART_SIZE,
    dry_run: bool = False,
    on_start=None,
    on_bytes=None,
) -> TransferResult:
    """Upload a local file or folder (recursively) to a remote URL prefix.

    Files identical to the existing object (size + ETag/SHA-256, see module notes) are
    skipped, so rerunning an interrupted push only sends what is missing. Each object is
    created in one atomic PUT or one completed multipart upload of ``part_size`` parts and
    carries its SHA-256 in ``x-amz-meta-sha256``.
    ``on_start(todo_list, total_bytes)`` and ``on_bytes(n)`` report progress.
    """
    src, dst = str(src), str(dst)
    if is_remote(src) or not is_remote(dst):
        raise ValueError(f"push copies a local path to a URL, got {redact(src)} → {redact(dst)}.")
    if part_size < 5 * 2**20:
        raise ValueError(f"part_size must be at least 5 MiB (S3 minimum), got {part_size}.")
    local = os.path.abspath(_strip_file(src))
    if not os.path.exists(local):
        raise FileNotFoundError(f"no such file or folder: {src}")
    if os.path.isfile(local):
        sources = [{"path": local, "rel": os.path.basename(local), "size": os.path.getsize(local)}]
        if dst.endswith("/"):
            dst = dst + os.path.basename(local)
        target_base = dst.rsplit("/", 1)[0]
        sources[0]["rel"] = dst.rsplit("/", 1)[1]
    else:
        sources = list_files(local)
        target_base = dst.rstrip("/")
    with friendly_errors(dst):
        fs, base = filesystem(target_base)
        existing = {}
        if fs.exists(base):
            existing = {e["rel"]: e for e in list_files(target_base)}

        def same(e: dict, d: dict) -> bool:
            if _etag_matches(e["path"], d["etag"], part_size):
                return True
            meta = fs.metadata(d["path"].split("://", 1)[1])
            return meta.get("sha256") == file_sha256(e["path"])

        todo, skip = _plan(sources, existing, same)
        result = TransferResult(skipped=[e["rel"] for e in skip])
        if on_start is not None:
            on_start(todo, sum(e["size"] for e in todo))
        if dry_run:
            result.copied = [e["rel"] for e in todo]
            return result
        for e in todo:
            target = base.rstrip("/") + "/" + e["rel"]
            fs.put_file(
                e["path"],
                target,
                callback=_byte_callback(on_bytes),
                chunksize=part_size,
                Metadata={"sha256": file_sha256(e["path"])},
            )
            result.copied.append(e["rel"])
            result.bytes += e["size"]
    return result


def pull(
    src: str,
    dst: str | os.PathLike,
    dry_run: bool = False,
    on_start=None,
    on_bytes=None,
) -> TransferResult:
    """Download a remote object or prefix (recursively) into a local file or folder.

    Local files identical to the object (size + ETag, or the object's SHA-256 metadata) are
    skipped. Every key is checked with :func:`confined_path` before anything is written: a
    key leaving the destination (``..``), an absolute key or one with a backslash raises
    :class:`UnsafePathError` and nothing is copied. Each file is written to a temporary name and renamed when complete, so an
    interrupted pull never leaves a partial file under the final name.
    """
    src, dst = str(src), str(dst)
    if not is_remote(src) or is_remote(dst):
        raise ValueError(f"pull copies a URL to a local path, got {redact(src)} → {redact(dst)}.")
    local = os.path.abspath(_strip_file(dst))
    with friendly_errors(src):
        fs, p = filesystem(src)
        sources = list_files(src)
        single = len(sources) == 1 and fs.isfile(p.rstrip("/"))
        if single and not (dst.endswith("/") or os.path.isdir(local)):
            base, sources[0]["rel"] = os.path.dirname(local), os.path.basename(local)
        else:
            base = local

        def same(e: dict, d: dict) -> bool:
            if _etag_matches(d["path"], e["etag"], PART_SIZE):
                return True
            meta = fs.metadata(e["path"].split("://", 1)[1])
            return meta.get("sha256") == file_sha256(d["path"])

        targets = {e["rel"]: confined_path(base, e["rel"]) for e in sources}  # check all first
        present = {}
        for e in sources:
            lp = targets[e["rel"]]
            if os.path.isfile(lp):
                present[e["rel"]] = {"path": lp, "size": os.path.getsize(lp)}
        todo, skip = _plan(sources, present, same)
        result = TransferResult(skipped=[e["rel"] for e in skip])
        if on_start is not None:
            on_start(todo, sum(e["size"] for e in todo))
        if dry_run:
            result.copied = [e["rel"] for e in todo]
            return result
        for e in todo:
            with local_output(targets[e["rel"]]) as tmp:
                fs.get_file(e["path"].split("://", 1)[1], tmp, callback=_byte_callback(on_bytes))
            result.copied.append(e["rel"])
            result.bytes += e["size"]
    return result


def remove(url: str | os.PathLike, dry_run: bool = False) -> list[str]:
    """Delete a file/object or everything under a folder/prefix; returns the removed paths.

    With ``dry_run`` nothing is deleted and the paths that would be removed are returned.
    Deletes go in batches (S3 DeleteObjects, 1,000 keys per request).
    """
    s = str(url)
    files = [e["path"] for e in list_files(s)]
    if dry_run or not files:
        return files
    with friendly_errors(s):
        fs, _ = filesystem(s)
        paths = [f.split("://", 1)[1] if is_remote(f) else f for f in files]
        fs.rm(paths)
        if not is_remote(s) and os.path.isdir(_strip_file(s)):
            shutil.rmtree(_strip_file(s), ignore_errors=True)
    return files
