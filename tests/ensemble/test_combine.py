import json
import os
import weakref

import nibabel as nib
import numpy as np
import pytest
import torch

from calibseg.ensemble import combine as C
from calibseg.ensemble import io as E
from calibseg.ensemble.members import group_members, member_plan, parse_raters, parse_seeds


def _load(path):
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def test_combine_writes_maps_equal_to_direct_formulas(members, tmp_path, tools):
    bundle, data = members
    folders = {n: os.path.join(bundle, n) for n in data}  # run folders: predictions/ found
    out = str(tmp_path / "ens")
    meta = C.combine_members(folders, out)
    assert meta["cases"] == ["case_a", "case_b"] and meta["method"] == "mean"
    assert meta["weights"] == pytest.approx([1 / 3] * 3)
    assert (
        json.load(open(os.path.join(out, "ensemble.json")))["members"][2]["name"] == "rater2_seed1"
    )
    p = np.stack([data[n]["case_a"] for n in data]).astype(np.float64)  # [M, C, x, y, z]
    pbar = p.mean(0)
    h = -(pbar * np.log(pbar)).sum(0)
    alea = (-(p * np.log(p)).sum(1)).mean(0)
    got = lambda k: _load(os.path.join(out, f"case_a_{k}.nii.gz"))  # noqa: E731
    np.testing.assert_allclose(got("prob"), np.moveaxis(pbar, 0, -1), atol=1e-6)
    np.testing.assert_array_equal(got("seg"), pbar.argmax(0))
    np.testing.assert_allclose(got("entropy"), h, atol=1e-5)
    np.testing.assert_allclose(got("aleatoric"), alea, atol=1e-5)
    np.testing.assert_allclose(got("epistemic"), h - alea, atol=1e-5)
    np.testing.assert_allclose(got("1mmaxp"), 1 - pbar.max(0), atol=1e-6)
    np.testing.assert_allclose(got("variance"), np.moveaxis(p.var(0), 0, -1), atol=1e-6)
    np.testing.assert_allclose(
        nib.load(os.path.join(out, "case_a_prob.nii.gz")).affine, tools.AFFINE
    )
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary leftovers


def test_members_are_read_one_at_a_time(members, tmp_path, monkeypatch):
    bundle, data = members
    real = C.read_probabilities
    alive = []

    def tracking(path):
        # the previous member's tensor must be gone before the next one is read
        assert all(ref() is None for ref in alive), "a member tensor is still held"
        prob, aff = real(path)
        alive.append(weakref.ref(prob))
        return prob, aff

    monkeypatch.setattr(C, "read_probabilities", tracking)
    C.combine_members({n: os.path.join(bundle, n) for n in data}, str(tmp_path / "e"))
    assert len(alive) == 6


def test_nnunet_npz_members_are_transposed(members, tmp_path, tools):
    AFFINE = tools.AFFINE
    bundle, data = members
    npz_dir = tmp_path / "nnunet"
    npz_dir.mkdir()
    for case, p in data["rater2_seed1"].items():
        np.savez_compressed(npz_dir / f"{case}.npz", probabilities=p.transpose(0, 3, 2, 1))
        nib.save(nib.Nifti1Image(p.argmax(0).astype(np.uint8), AFFINE), npz_dir / f"{case}.nii.gz")
    prob, aff = E.read_probabilities(str(npz_dir / "case_b.npz"))
    np.testing.assert_allclose(prob.numpy(), data["rater2_seed1"]["case_b"])
    np.testing.assert_allclose(aff, AFFINE)
    out = str(tmp_path / "mixed")
    C.combine_members({"ours": os.path.join(bundle, "rater2_seed1"), "nn": str(npz_dir)}, out)
    np.testing.assert_allclose(
        _load(os.path.join(out, "case_b_prob.nii.gz")),
        np.moveaxis(data["rater2_seed1"]["case_b"], 0, -1),
        atol=1e-6,
    )
    np.testing.assert_allclose(_load(os.path.join(out, "case_b_epistemic.nii.gz")), 0, atol=1e-6)


def test_weighted_and_logit_mean(members, tmp_path):
    bundle, data = members
    folders = {n: os.path.join(bundle, n) for n in data}
    meta = C.combine_members(folders, str(tmp_path / "w"), method="weighted", weights=[2, 1, 1])
    assert meta["weights"] == pytest.approx([0.5, 0.25, 0.25])
    p = np.stack([data[n]["case_b"] for n in data]).astype(np.float64)
    want = 0.5 * p[0] + 0.25 * p[1] + 0.25 * p[2]
    got = _load(str(tmp_path / "w" / "case_b_prob.nii.gz"))
    np.testing.assert_allclose(got, np.moveaxis(want, 0, -1), atol=1e-6)
    C.combine_members(folders, str(tmp_path / "g"), method="logit-mean")
    geo = torch.softmax(torch.from_numpy(np.log(p).mean(0)), 0).numpy()
    got = _load(str(tmp_path / "g" / "case_b_prob.nii.gz"))
    np.testing.assert_allclose(got, np.moveaxis(geo, 0, -1), atol=1e-6)
    with pytest.raises(ValueError, match="needs --weights"):
        C.combine_members(folders, str(tmp_path / "x"), method="weighted")
    with pytest.raises(ValueError, match="3 members"):
        C.combine_members(folders, str(tmp_path / "x"), method="weighted", weights=[1, 2])


def test_members_must_agree_on_cases_and_shapes(members, tmp_path, tools):
    write_member, random_probs = tools.write_member, tools.random_probs
    bundle, data = members
    rng = np.random.default_rng(1)
    odd = write_member(str(tmp_path / "odd"), {"case_a": random_probs(rng)})
    with pytest.raises(ValueError, match="disagree on cases.*missing \\['case_b'\\]"):
        C.combine_members(
            {"a": os.path.join(bundle, "rater1_seed1"), "odd": odd}, str(tmp_path / "o")
        )
    big = write_member(
        str(tmp_path / "big"), {c: random_probs(rng, shape=(6, 4, 3)) for c in ("case_a", "case_b")}
    )
    with pytest.raises(ValueError, match="case case_a: member 'big' has shape"):
        C.combine_members(
            {"a": os.path.join(bundle, "rater1_seed1"), "big": big}, str(tmp_path / "o")
        )
    assert not os.path.exists(tmp_path / "o" / "ensemble.json")
    with pytest.raises(FileNotFoundError, match="no predictions"):
        C.combine_members({"e": str(tmp_path)}, str(tmp_path / "o2"))


def test_member_names_and_groups():
    assert parse_raters("1,2,3") == [1, 2, 3]
    assert parse_raters("mean") == ["mean"]
    assert parse_seeds("0,11") == [0, 11]
    with pytest.raises(ValueError, match="invalid rater"):
        parse_raters("0")
    with pytest.raises(ValueError, match="non-negative"):
        parse_seeds("a")
    plan = member_plan([1, "mean"], [0, 11])
    assert [n for n, _, _ in plan] == ["rater1_seed0", "rater1_seed11", "mean_seed0", "mean_seed11"]
    names = ["rater1_seed1", "rater1_seed2", "rater2_seed1", "mean_seed1"]
    assert group_members(names, "per-rater") == {
        "rater1": ["rater1_seed1", "rater1_seed2"],
        "rater2": ["rater2_seed1"],
        "mean": ["mean_seed1"],
    }
    assert group_members(names, "global") == {"global": names}
    assert group_members(names, "seeds1=rater1_seed1,rater2_seed1") == {
        "seeds1": ["rater1_seed1", "rater2_seed1"]
    }
    with pytest.raises(ValueError, match="unknown members nope"):
        group_members(names, "g=nope")
    with pytest.raises(ValueError, match="unknown strategy"):
        group_members(names, "median")
