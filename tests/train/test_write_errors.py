"""A full disk during training: one line naming the checkpoint and the cause, no partial file."""

from __future__ import annotations

import errno
import os

from calibseg import storage
from calibseg.cli import common
from calibseg.cli.app import app


def test_disk_full_while_saving_checkpoint_names_file_and_cause(tiny_bundle, monkeypatch, capsys):
    real_open = open

    class _Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(bytes(data)[:4096])  # some bytes reach the disk, then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, k):
            return getattr(self._f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return (
            _Full(f) if "w" in mode and os.path.basename(str(path)).startswith(".last.pt.") else f
        )

    monkeypatch.setattr(storage, "open", fake_open, raising=False)
    rc = common.run_app(app, ["train", tiny_bundle, "--run-name", "diskfull", "--max-epochs", "1"])
    err = capsys.readouterr().err
    last = os.path.join(tiny_bundle, "diskfull", "checkpoints", "last.pt")
    assert rc == 1 and err.count("\n") == 1, err
    assert f"cannot write {last}: No space left on device" in err
    ckpt_dir = os.path.dirname(last)
    assert not os.path.exists(last)
    assert not [n for n in os.listdir(ckpt_dir) if ".part" in n]
