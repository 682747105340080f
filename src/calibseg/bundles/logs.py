"""Logging of a run: the bundle's ``logging.conf`` with its log file in the run folder."""

from __future__ import annotations

import logging
import logging.config
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from calibseg import storage

__all__ = ["bundle_logging", "to_log_file"]


def _not_engine(record: logging.LogRecord) -> bool:
    """Ignite's own error lines ("Engine run is terminating due to exception") repeat the error
    the command line reports in one line: they go to the log file only."""
    return not record.name.startswith("ignite.")


@contextmanager
def bundle_logging(bundle: str, log_dir: str) -> Iterator[None]:
    """Configure logging from the bundle's logging.conf (file: ``<log_dir>/train.log``) for
    the duration of the block; the previous root handlers and level are restored after."""
    os.makedirs(log_dir, exist_ok=True)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "logging.conf")
        with open(p, "wb") as f:
            f.write(storage.read_bytes(storage.join(bundle, "logging.conf")))
        logging.config.fileConfig(
            p,
            defaults={"logfile": os.path.join(log_dir, "train.log").replace("\\", "/")},
            disable_existing_loggers=False,
        )
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.addFilter(_not_engine)
    try:
        yield
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def to_log_file(*names: str) -> None:
    """Send the records of the loggers ``names`` to the root handlers (the run's log file)
    instead of their own: MONAI's StatsHandler gives its named logger a stdout handler, which
    suits ``monai.bundle run`` but not a command with its own console output."""
    for name in names:
        lg = logging.getLogger(name)
        for h in lg.handlers[:]:
            lg.removeHandler(h)
        lg.propagate = True
