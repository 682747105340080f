"""Training and prediction on a tiny synthetic set: outputs, value ranges, exact resume, faults."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from calibseg.bundles import create_bundle, load_bundle
from calibseg.bundles import runner as R
from calibseg.bundles.workflow import he_init


@pytest.mark.slow
def test_train_then_predict(tiny_bundle, trained):
    run = trained
    assert run == os.path.join(tiny_bundle, "seed_0")
    for f in ("last.pt", "best.pt", "final.pt"):
        assert os.path.isfile(os.path.join(run, "checkpoints", f)), f
    with open(os.path.join(run, "logs", "train.log")) as f:
        log = f.read()
    assert log.count(' - INFO - epoch {"epoch": ') == 2
    assert any(n.startswith("events") for n in os.listdir(os.path.join(run, "logs", "tensorboard")))
    summary = json.load(open(os.path.join(run, "training_summary.json")))
    assert summary["epochs"] == 2 and len(summary["history"]) == 2
    h = summary["history"][-1]
    assert 0.0 <= h["dice"] <= 1.0 and 0.0 <= h["ece"] <= h["mce"] <= 1.0 and h["ace"] <= h["mce"]
    resolved = json.load(open(os.path.join(run, "resolved_config.json")))
    assert resolved["bundle_hash"][:8] == os.path.basename(tiny_bundle)[-8:]
    assert resolved["config"]["max_epochs"] == 2 and len(resolved["config_hash"]) == 64

    pred = R.predict(tiny_bundle, seed=0, checkpoint="best")
    test_items = json.load(open(os.path.join(tiny_bundle, "splits.json")))["test"]
    assert sorted(os.listdir(pred)) == sorted(
        f"{it['case']}_{k}.nii.gz" for it in test_items for k in ("prob", "seg")
    )
    for it in test_items:
        img = nib.load(it["image"])
        prob_img = nib.load(os.path.join(pred, f"{it['case']}_prob.nii.gz"))
        seg_img = nib.load(os.path.join(pred, f"{it['case']}_seg.nii.gz"))
        prob, seg = prob_img.get_fdata(), np.asarray(seg_img.dataobj)
        assert prob.shape == (*img.shape, 4) and seg.shape == img.shape
        np.testing.assert_allclose(prob_img.affine, img.affine)
        assert prob.min() >= 0.0 and prob.max() <= 1.0
        np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(seg, prob.argmax(-1))

    # 16-bit storage: about half the bytes, same probabilities within 1e-4
    case = test_items[0]["case"]
    ref = nib.load(os.path.join(pred, f"{case}_prob.nii.gz")).get_fdata()
    R.predict(tiny_bundle, seed=0, checkpoint="best", float16=True)
    half = nib.load(os.path.join(pred, f"{case}_prob.nii.gz"))
    assert half.get_data_dtype() == np.uint16
    np.testing.assert_allclose(half.get_fdata(), ref, atol=1e-4)


@pytest.mark.slow
def test_interrupt_and_resume_equals_uninterrupted(tiny_bundle, trained, monkeypatch):
    from monai.engines import SupervisedEvaluator

    ref = torch.load(os.path.join(trained, "checkpoints", "last.pt"), weights_only=True)

    calls = {"n": 0}
    real_run = SupervisedEvaluator.run

    def interrupted_run(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C while validating epoch 2
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(SupervisedEvaluator, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        R.train(tiny_bundle, seed=0, run_name="interrupted")
    ckpt_dir = os.path.join(tiny_bundle, "interrupted", "checkpoints")
    half = torch.load(os.path.join(ckpt_dir, "last.pt"), weights_only=True)
    assert half["run"]["epoch"] == 1 and not any(".part" in n for n in os.listdir(ckpt_dir))
    assert not os.path.exists(os.path.join(ckpt_dir, "final.pt"))  # no final after a failure

    monkeypatch.setattr(SupervisedEvaluator, "run", real_run)
    R.train(tiny_bundle, seed=0, run_name="interrupted")  # resumes at epoch 2
    res = torch.load(os.path.join(ckpt_dir, "last.pt"), weights_only=True)
    assert res["run"]["epoch"] == ref["run"]["epoch"] == 2
    assert res["trainer"]["iteration"] == ref["trainer"]["iteration"] > 0
    for k, v in ref["model"].items():
        assert torch.equal(v, res["model"][k]), k
    assert res["run"]["history"] == ref["run"]["history"]
    # a finished run is not trained again
    mtime = os.stat(os.path.join(ckpt_dir, "last.pt")).st_mtime_ns
    R.train(tiny_bundle, seed=0, run_name="interrupted")
    assert os.stat(os.path.join(ckpt_dir, "last.pt")).st_mtime_ns == mtime


def test_seed_changes_he_init(tiny_bundle):
    p = load_bundle(tiny_bundle)
    a, b, c = (p.get_parsed_content("network_def", lazy=False) for _ in range(3))
    he_init(a, 0)
    he_init(b, 0)
    he_init(c, 1)
    wa, wb, wc = (
        next(m.weight for m in n.modules() if isinstance(m, torch.nn.Conv3d)) for n in (a, b, c)
    )
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    fan_out = wa.shape[0] * wa[0, 0].numel()
    assert abs(float(wa.detach().std()) - (2.0 / fan_out) ** 0.5) < 0.5 * (2.0 / fan_out) ** 0.5


def test_faults(tmp_path, tiny_bundle, trained, synth_root, tiny_overrides):
    with pytest.raises(FileNotFoundError, match="no bundle at"):
        R.train(str(tmp_path / "nope"))
    other = create_bundle(
        "synthetic",
        "baseline_dice_ce",
        out=str(tmp_path),
        data_root=synth_root,
        overrides=tiny_overrides,
    )
    foreign = os.path.join(trained, "checkpoints", "best.pt")
    with pytest.raises(ValueError, match="belongs to another bundle"):
        R.predict(other, checkpoint=foreign)
    os.makedirs(os.path.join(other, "seed_0", "checkpoints"))
    import shutil

    shutil.copy(
        os.path.join(trained, "checkpoints", "last.pt"),
        os.path.join(other, "seed_0", "checkpoints"),
    )
    with pytest.raises(ValueError, match="belongs to another bundle"):
        R.train(other, seed=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        R.predict(other, seed=5)
    with pytest.raises(ValueError, match="rater"):
        R.train(tiny_bundle, rater="median")


def test_early_stopping(tmp_path, synth_root, tiny_overrides):
    # min_delta 1.0: no later validation can improve on the first → stop after patience 1
    b = create_bundle(
        "synthetic",
        "baseline_dice",
        out=str(tmp_path),
        data_root=synth_root,
        overrides={
            **tiny_overrides,
            "train#max_epochs": 5,
            "train#early_stopping_patience": 0,
            "train#early_stopping_min_delta": 1.0,
        },
    )
    with pytest.raises(ValueError, match="patience"):
        R.train(b, seed=0, patience=-1)
    run = R.train(b, seed=0, patience=1)  # the argument overrides the bundle's 0 (off)
    summary = json.load(open(os.path.join(run, "training_summary.json")))
    assert summary["epochs"] == 2 and summary["early_stopped"] and summary["best_epoch"] == 1
    final = torch.load(os.path.join(run, "checkpoints", "final.pt"), weights_only=True)
    assert final["run"]["epoch"] == 2 and final["run"]["stopped"]
    best = torch.load(os.path.join(run, "checkpoints", "best.pt"), weights_only=True)
    assert best["trainer"]["iteration"] == final["trainer"]["iteration"] // 2  # epoch 1
    # a stopped run is finished: rerunning it trains nothing
    mtime = os.stat(os.path.join(run, "checkpoints", "last.pt")).st_mtime_ns
    R.train(b, seed=0, patience=1)
    assert os.stat(os.path.join(run, "checkpoints", "last.pt")).st_mtime_ns == mtime
