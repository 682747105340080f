"""Atomically written files get ordinary permissions, not the 0600 of their temp file."""

import os
import stat

from calibseg import storage


def test_written_files_follow_the_umask(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        target = tmp_path / "sub" / "table.csv"
        storage.write_text(target, "a,b\n1,2\n")
        mode = stat.S_IMODE(os.stat(target).st_mode)
    finally:
        os.umask(umask)
    assert mode == 0o644
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]  # no temp file left
