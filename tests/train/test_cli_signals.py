"""Ctrl-C (SIGINT) during `calibseg train` in a real subprocess: exit 130, a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

CALIBSEG = os.path.join(os.path.dirname(sys.executable), "calibseg")


@pytest.mark.slow
def test_sigint_during_train_exits_130_and_rerun_resumes(tiny_bundle):
    run = os.path.join(tiny_bundle, "sigint")
    last = os.path.join(run, "checkpoints", "last.pt")
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [CALIBSEG, "train", tiny_bundle, "--run-name", "sigint", "--max-epochs", "200"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell without job control starts background jobs with SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(last) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert os.path.exists(last), proc.stderr.read() if proc.poll() is not None else "no epoch"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    done = int(torch.load(last, weights_only=True)["run"]["epoch"])
    assert 1 <= done < 200

    res = subprocess.run(
        [*cmd[:-1], str(done + 1)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    with open(os.path.join(run, "training_summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs"] == done + 1 and len(summary["history"]) == done + 1
    with open(os.path.join(run, "logs", "train.log")) as f:
        assert f"from epoch {done}" in f.read()
