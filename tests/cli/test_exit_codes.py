"""Exit codes and one-line errors of the installed console script (a real subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")


def test_refusal_exits_1(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("data")
    res = cli("storage", "rm", str(tmp_path))
    assert res.returncode == 1
    assert "refusing to delete 1 file(s) without --yes" in res.stderr
    assert (tmp_path / "keep.txt").exists()


def test_data_prepare_with_problems_exits_1(cli, tmp_path):
    from calibseg.data.synthetic import generate

    root = tmp_path / "synth"
    generate(str(root), n_cases=2, n_raters=1, shape=(8, 8, 8), seed=0)
    label = next(p for p in root.rglob("*.nii.gz") if "label" in str(p))
    label.write_bytes(b"not a nifti")
    res = cli(
        "data", "prepare", "synthetic", "--data-root", str(root), "--out", str(tmp_path / "d.json")
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "problem(s)" in res.stdout and not (tmp_path / "d.json").exists()


def test_success_exits_0(cli, tmp_path):
    res = cli("storage", "ls", str(tmp_path))
    assert res.returncode == 0 and "0 file(s)" in res.stdout


def test_usage_errors_are_clicks_message_exit_2(cli):
    cases = {
        ("train", "--bogus"): "No such option: --bogus",
        ("train",): "Missing argument",
        ("train", "b", "--seed", "abc"): "Invalid value for '--seed'",
        ("storage", "push", "only-one"): "Missing argument",
    }
    for args, text in cases.items():
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("Usage: calibseg ") and text in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) <= 5


def _silent_server():
    """A TCP server that accepts connections and never answers (an S3 endpoint that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted = threading.Event()
    conns = []

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            accepted.set()

    threading.Thread(target=loop, daemon=True).start()
    return srv, accepted, conns


def test_ctrl_c_during_storage_push_exits_130(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(1024))
    srv, accepted, conns = _silent_server()
    port = srv.getsockname()[1]
    env = {
        **os.environ,
        "CALIBSEG_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.Popen(
        [CALIBSEG, "storage", "push", str(src), "s3://bucket-x/big"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell without job control starts background jobs with SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert accepted.wait(60), "the push never reached the endpoint"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()
        for c in conns:
            c.close()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    # the `push … && rm -rf big/` idiom keeps the data
    assert (src / "a.bin").exists()
