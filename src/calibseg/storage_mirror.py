"""Remote runs: a local working copy of a run folder kept in step with its ``s3://`` original.

A run of an ``s3://`` bundle works in a local folder keyed by the bundle URL
(``$CALIBSEG_CACHE/runs/<sha256(url)[:16]>/<bundle name>/<run name>``) beside local copies of
the bundle's defining files (:func:`stage_bundle`). Before training, the remote run's
checkpoints, logs and JSON files are mirrored into it (:func:`pull_run`; the remote run is the
truth: local files it lacks are removed), so a rerun resumes from the remote ``last.pt`` on any
machine. Changed files are uploaded with :func:`push_run`: one atomic PUT per object,
unchanged objects skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable

from calibseg import storage

__all__ = ["PULLED", "is_partial", "pull_run", "push_run", "stage_bundle", "work_root"]

logger = logging.getLogger(__name__)

PULLED = ("checkpoints", "logs", "resolved_config.json", "training_summary.json")
"""The entries of a run folder that training needs (predictions and evaluations are not)."""


def work_root() -> str:
    """``$CALIBSEG_CACHE/runs`` (default ``~/.cache/calibseg/runs``)."""
    return os.path.join(
        os.environ.get("CALIBSEG_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "calibseg"),
        "runs",
    )


def stage_bundle(bundle: str, files: Iterable[str]) -> str:
    """Copy ``files`` (paths relative to the bundle; absent optional ones skipped) of the remote
    ``bundle`` into its local working folder; return that folder (same name, so hashes and run
    names are unchanged)."""
    url = str(bundle).rstrip("/")
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    local = os.path.join(work_root(), key, url.rsplit("/", 1)[-1])
    for rel in files:
        src = storage.join(url, rel)
        if storage.exists(src):
            storage.write_bytes(os.path.join(local, rel), storage.read_bytes(src))
    return local


def is_partial(rel: str) -> bool:
    """Temporary files of an interrupted atomic write (``.<name>.<random>.part<suffix>``)."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".part" in name


def pull_run(run: str, local_run: str) -> None:
    """Mirror the remote run's checkpoints, logs and JSON files into ``local_run``.

    Every remote key is checked with :func:`calibseg.storage.confined_path` before any local
    file is touched: a key that would land outside ``local_run`` raises
    :class:`calibseg.storage.UnsafePathError`.
    """
    remote = {}
    if storage.exists(run):
        listed = storage.list_files(run)
        for e in listed:
            storage.confined_path(local_run, e["rel"])
        remote = {
            e["rel"]: e
            for e in listed
            if e["rel"].split("/", 1)[0] in PULLED and not is_partial(e["rel"])
        }
    for entry in PULLED:
        p = os.path.join(local_run, entry)
        if os.path.isdir(p):
            for rel in (e["rel"] for e in storage.list_files(p)):
                if f"{entry}/{rel}" not in remote:
                    os.unlink(os.path.join(p, rel))
        elif os.path.isfile(p) and entry not in remote:
            os.unlink(p)
    for entry in PULLED:
        if entry in remote:
            storage.pull(storage.join(run, entry), os.path.join(local_run, entry))
        elif any(r.startswith(entry + "/") for r in remote):
            storage.pull(storage.join(run, entry), os.path.join(local_run, entry) + "/")
    if not remote and os.path.isdir(local_run):
        shutil.rmtree(local_run)
    if remote:
        logger.info("pulled %d files of %s", len(remote), storage.redact(run))


def push_run(local_run: str, run: str) -> None:
    """Upload the changed files of ``local_run`` to ``run`` (stale partial files skipped)."""
    for rel in (e["rel"] for e in storage.list_files(local_run)):
        if is_partial(rel):
            os.unlink(os.path.join(local_run, rel))
    storage.push(local_run, run)
