"""Bundle generation: content-hash names, no clobbering, parsable configs, errors, listing."""

import hashlib
import json
import os

import pytest
import yaml

from calibseg.bundles import (
    BUNDLE_FILES,
    LOSSES,
    bundle_hash,
    bundle_name,
    create_bundle,
    list_bundles,
    load_bundle,
    read_splits,
)


def _independent_hash(path: str) -> str:
    h = hashlib.sha256()
    for rel in BUNDLE_FILES:
        with open(os.path.join(path, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def test_name_is_content_hash_and_stable(tmp_path, synth_root):
    out = str(tmp_path / "b")
    p1 = create_bundle("synthetic", "baseline_dice_ce", out=out, data_root=synth_root)
    name = os.path.basename(p1)
    assert name.startswith("synthetic_baseline_dice_ce_")
    assert name[-8:] == _independent_hash(p1)[:8] == bundle_hash(p1)[:8]
    for rel in BUNDLE_FILES:
        assert os.path.isfile(os.path.join(p1, rel)), rel
    os.mkdir(tmp_path / "plain")
    assert os.stat(p1).st_mode == os.stat(tmp_path / "plain").st_mode  # not mkdtemp's 0700
    # same inputs → same folder; the existing one is reused, not rewritten
    marker = os.path.join(p1, "configs", "train.yaml")
    before = os.stat(marker).st_mtime_ns
    with open(os.path.join(p1, "splits.json")) as f:
        splits_before = f.read()
    p2 = create_bundle("synthetic", "baseline_dice_ce", out=out, data_root=synth_root)
    assert p2 == p1 and os.stat(marker).st_mtime_ns == before
    with open(os.path.join(p1, "splits.json")) as f:
        assert f.read() == splits_before
    # one template value changed → another name; the first bundle untouched
    p3 = create_bundle(
        "synthetic",
        "baseline_dice_ce",
        out=out,
        data_root=synth_root,
        overrides={"train#learning_rate": 1.0e-3},
    )
    assert p3 != p1 and os.path.basename(p3)[-8:] == _independent_hash(p3)[:8]
    assert load_bundle(p3).get("learning_rate") == 1.0e-3
    assert load_bundle(p1).get("learning_rate") == 2.0e-4
    assert sorted(os.listdir(out)) == sorted([name, os.path.basename(p3)])


def test_splits_and_data_yaml(tmp_path, synth_root):
    p = create_bundle("synthetic", "softl1ace_ce", out=str(tmp_path), data_root=synth_root)
    with open(os.path.join(p, "configs", "data.yaml")) as f:
        data = yaml.safe_load(f)
    assert data["dataset"] == "synthetic"
    assert data["class_names"] == ["background", "organ", "vessel", "lesion"]
    assert synth_root not in open(os.path.join(p, "configs", "data.yaml")).read()
    record = json.load(open(os.path.join(p, "data_root.json")))
    assert record == {"splits_root": os.path.abspath(synth_root), "data_root": synth_root}
    splits = read_splits(p)
    cases = [it["case"] for s in ("training", "validation", "test") for it in splits[s]]
    assert sorted(cases) == [f"synth_{i:03d}" for i in range(5)]
    assert all(os.path.isabs(it["image"]) for it in splits["training"])
    meta = json.load(open(os.path.join(p, "metadata.json")))
    assert meta["calibseg"] == {"dataset": "synthetic", "loss": "softl1ace_ce"}


def test_losses_parse_to_the_right_classes(tmp_path, synth_root):
    import torch

    from calibseg import losses as L

    assert len(LOSSES) == 12  # 3 kinds × 3 baselines, and the paper's preset of the Dice+CE three
    expected = {
        "baseline_ce": L.CrossEntropyLoss,
        "hardl1ace_dice_ce": L.HardL1ACEandDiceCELoss,
        "softl1ace_dice": L.SoftL1ACEandDiceLoss,
        "hardl1ace_ce": L.HardL1ACEandCELoss,
    }
    logits = torch.randn(2, 4, 8, 8, 8)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 8, 8, 8)), 4).movedim(-1, 1).float()
    for loss in LOSSES:
        parser = load_bundle(
            create_bundle("synthetic", loss, out=str(tmp_path), data_root=synth_root)
        )
        fn = parser.get_parsed_content("loss_def")
        assert parser.get("loss_name") == loss
        if loss in expected:
            assert type(fn) is expected[loss]
        value = fn(logits, y)
        assert torch.isfinite(value) and value.ndim == 0
        if loss.startswith("baseline"):
            assert parser.get("ace_weight") == 0.0
        elif loss.endswith("_paper"):
            # the paper's compound: ACE, Dice and CE weighted 0.33 each; empty classes left out
            assert fn.ace_weight == fn.dice_weight == fn.ce_weight == 0.33
            assert fn.ace.ignore_empty_classes is True
        else:
            assert fn.ace_weight == parser.get("ace_weight") == 1.0
    # the ACE loss is the baseline plus the weighted ACE term
    base = load_bundle(
        create_bundle("synthetic", "baseline_dice_ce", out=str(tmp_path), data_root=synth_root)
    )
    hard = load_bundle(
        create_bundle("synthetic", "hardl1ace_dice_ce", out=str(tmp_path), data_root=synth_root)
    )
    ace = L.HardL1ACELoss(num_bins=20, softmax=True, ignore_empty_classes=False)(logits, y)
    torch.testing.assert_close(
        hard.get_parsed_content("loss_def")(logits, y),
        base.get_parsed_content("loss_def")(logits, y) + ace,
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_inputs(tmp_path, synth_root, monkeypatch):
    with pytest.raises(ValueError, match="unknown loss 'focal'.*baseline_ce.*softl1ace_dice_ce"):
        create_bundle("synthetic", "focal", out=str(tmp_path), data_root=synth_root)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*acdc17.*synthetic"):
        create_bundle("mnist", "baseline_ce", out=str(tmp_path), data_root=synth_root)
    monkeypatch.delenv("CALIBSEG_DATA_SYNTHETIC", raising=False)
    with pytest.raises(ValueError, match="no data root.*CALIBSEG_DATA_SYNTHETIC"):
        create_bundle("synthetic", "baseline_ce", out=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_bundle("synthetic", "baseline_ce", out=str(tmp_path), data_root=str(tmp_path / "no"))
    with pytest.raises(ValueError, match="override"):
        create_bundle(
            "synthetic",
            "baseline_ce",
            out=str(tmp_path),
            data_root=synth_root,
            overrides={"nope#x": 1},
        )
    with pytest.raises(FileNotFoundError, match="no bundle at"):
        load_bundle(str(tmp_path / "missing"))
    assert not os.listdir(tmp_path)  # nothing half-created


def test_list_bundles(tmp_path, synth_root):
    out = str(tmp_path / "b")
    a = create_bundle("synthetic", "baseline_dice", out=out, data_root=synth_root)
    create_bundle("synthetic", "hardl1ace_dice", out=out, data_root=synth_root)
    os.makedirs(os.path.join(a, "seed_3", "checkpoints"))
    with open(os.path.join(a, "seed_3", "training_summary.json"), "w") as f:
        json.dump({"best_dice": 0.75}, f)
    rows = {r["loss"]: r for r in list_bundles(out)}
    assert set(rows) == {"baseline_dice", "hardl1ace_dice"}
    assert (
        rows["baseline_dice"]["runs"] == ["seed_3"] and rows["baseline_dice"]["best_dice"] == 0.75
    )
    assert rows["hardl1ace_dice"]["runs"] == [] and rows["hardl1ace_dice"]["best_dice"] is None
    assert all(r["data"] == "synthetic" for r in rows.values())
    with pytest.raises(FileNotFoundError):
        list_bundles(str(tmp_path / "nothing"))


def test_bundles_are_portable(tmp_path, synth_root, monkeypatch):
    import shutil

    from calibseg.bundles import resolve_data_root

    monkeypatch.delenv("CALIBSEG_DATA_SYNTHETIC", raising=False)
    a, b, c = (str(tmp_path / d) for d in ("a", "b", "c"))
    for d in (a, b, c):
        shutil.copytree(synth_root, d)
    out = str(tmp_path / "bundles")
    pa = create_bundle("synthetic", "baseline_dice", out=out, data_root=a)
    h = bundle_hash(pa)
    splits_a = read_splits(pa)
    assert all(it["image"].startswith(a + os.sep) for it in splits_a["training"])
    # the same configs with the data elsewhere: the same bundle (name and hash), now defaulting
    # to the new root; splits.json is kept and its items move under the root in use
    pb = create_bundle("synthetic", "baseline_dice", out=out, data_root=b)
    assert pb == pa and bundle_hash(pb) == h and os.listdir(out) == [os.path.basename(pa)]
    assert resolve_data_root(pa) == b
    moved = read_splits(pa, resolve_data_root(pa))
    for split, items in splits_a.items():
        for old, new in zip(items, moved[split], strict=True):
            assert new["case"] == old["case"]
            assert new["image"] == os.path.join(b, os.path.relpath(old["image"], a))
            assert new["raters"] == [os.path.join(b, os.path.relpath(r, a)) for r in old["raters"]]
            assert os.path.isfile(new["image"])
    # at run time: the option first, then the environment, then the record
    monkeypatch.setenv("CALIBSEG_DATA_SYNTHETIC", c)
    assert resolve_data_root(pa) == c and resolve_data_root(pa, a) == a
    item = read_splits(pa, resolve_data_root(pa))["test"][0]
    assert item["label"].startswith(c + os.sep) and os.path.isfile(item["label"])
    # a bundle from another machine (other root, same configs) has the same name
    assert bundle_name("synthetic", "baseline_dice", data_root=c) == os.path.basename(pa)
