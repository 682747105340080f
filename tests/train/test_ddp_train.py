"""`torchrun --nproc-per-node 2 -m calibseg train`: one DDP model (gloo, CPU), rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from calibseg.bundles import load_bundle
from calibseg.bundles import runner as R

_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _torchrun(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, "-m", "calibseg", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _validate_single_process(bundle: str, state: dict) -> dict[str, float]:
    """The bundle's validation workflow (``validate#evaluator``) of the weights ``state`` on the
    whole validation split, in this (single) process."""
    parser = load_bundle(bundle, overrides={"bundle_root": bundle})
    parser.get_parsed_content("network_def").load_state_dict(state)
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    m = evaluator.state.metrics
    return {"dice": m["val_mean_dice"], **{k: m[f"val_{k}_macro"] for k in ("ece", "ace", "mce")}}


@pytest.mark.slow
def test_torchrun_two_ranks_train_one_model(tiny_bundle):
    res = _torchrun("train", tiny_bundle, "--max-epochs", "1", "--run-name", "ddp")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    run = os.path.join(tiny_bundle, "ddp")
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [
        "best.pt",
        "final.pt",
        "last.pt",
    ]
    with open(os.path.join(run, "logs", "train.log")) as f:
        log = f.read()
    assert "world size 2" in log and log.count(' - INFO - epoch {"epoch": ') == 1  # rank 0 only
    events = os.listdir(os.path.join(run, "logs", "tensorboard"))
    assert len(events) == 1 and events[0].startswith("events")  # one writer: rank 0
    summary = json.load(open(os.path.join(run, "training_summary.json")))
    assert summary["epochs"] == 1 and len(summary["history"]) == 1
    resolved = json.load(open(os.path.join(run, "resolved_config.json")))
    # 3 training cases sharded over 2 ranks (2 each, padded), batch 2: 1 step (2 single-process)
    assert resolved["run"]["world_size"] == 2 and resolved["config"]["steps_per_epoch"] == 1

    last = R.load_checkpoint(os.path.join(run, "checkpoints", "last.pt"), tiny_bundle)
    final = R.load_checkpoint(os.path.join(run, "checkpoints", "final.pt"), tiny_bundle)
    assert last["run"]["epoch"] == 1 and not any(k.startswith("module.") for k in last["model"])
    for k, v in final["model"].items():
        assert torch.equal(v, last["model"][k]), k
    # the validation of the DDP run equals a single-process one of the final weights
    ref = _validate_single_process(tiny_bundle, final["model"])
    for k in ("dice", "ece", "ace", "mce"):
        assert summary["history"][0][k] == pytest.approx(ref[k], abs=1e-5), k

    pred = R.predict(tiny_bundle, checkpoint="best", run_name="ddp")
    test_cases = json.load(open(os.path.join(tiny_bundle, "splits.json")))["test"]
    assert sorted(os.listdir(pred)) == sorted(
        f"{it['case']}_{s}.nii.gz" for it in test_cases for s in ("prob", "seg")
    )


def test_world_size_without_torchrun_is_one_clear_error(tiny_bundle, monkeypatch):
    for key in _DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="start with torchrun"):
        R.train(tiny_bundle, max_epochs=1, run_name="ddp_no_torchrun")
    assert not torch.distributed.is_initialized()
    assert not os.path.exists(os.path.join(tiny_bundle, "ddp_no_torchrun", "checkpoints"))
    monkeypatch.delenv("WORLD_SIZE")
