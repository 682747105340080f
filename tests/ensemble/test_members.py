import os

import pytest

from calibseg.ensemble import members as M


def test_train_members_calls_runner_per_rater_and_seed(monkeypatch, tmp_path):
    from calibseg.bundles import runner

    calls = []

    def fake_train(bundle, seed=0, max_epochs=None, debug=False, run_name=None, rater=None, **kw):
        calls.append((bundle, seed, max_epochs, debug, run_name, rater))
        assert kw["patience"] == 4
        return os.path.join(bundle, run_name)

    monkeypatch.setattr(runner, "train", fake_train)
    runs = M.train_members("B", [1, 2, "mean"], [0, 11], max_epochs=3, patience=4)
    assert list(runs) == [
        "rater1_seed0",
        "rater1_seed11",
        "rater2_seed0",
        "rater2_seed11",
        "mean_seed0",
        "mean_seed11",
    ]
    assert calls[0] == ("B", 0, 3, False, "rater1_seed0", 1)
    assert calls[-1] == ("B", 11, 3, False, "mean_seed11", "mean")
    assert runs["rater2_seed11"] == os.path.join("B", "rater2_seed11")


def test_train_members_through_dask_submit(monkeypatch):
    import calibseg.distributed as D
    from calibseg.bundles import runner

    seen = {}

    def fake_submit(jobs, scheduler=None, workers=None, resources=None, progress=True):
        seen.update(jobs=jobs, scheduler=scheduler, workers=workers, resources=resources)
        return [f"{kw['bundle']}/{kw['run_name']}" for _, kw in jobs]

    monkeypatch.setattr(D, "submit_training", fake_submit)
    runs = M.train_members(
        "B", ["random"], [5], scheduler="tcp://127.0.0.1:8786", gpus_per_member=1
    )
    assert runs == {"random_seed5": "B/random_seed5"}
    fn, kw = seen["jobs"][0]
    assert fn is runner.train and kw["rater"] == "random" and kw["seed"] == 5
    assert seen["resources"] == {"GPU": 1.0} and seen["scheduler"] == "tcp://127.0.0.1:8786"


def test_predict_and_discover_members(monkeypatch, tmp_path):
    from calibseg.bundles import runner

    def fake_predict(bundle, seed=0, checkpoint="best", run_name=None, cases="test", float16=False):
        d = os.path.join(bundle, run_name, "predictions")
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, f"c{seed}_prob.nii.gz"), "w").close()
        return d

    monkeypatch.setattr(runner, "predict", fake_predict)
    b = str(tmp_path)
    out = M.predict_members(b, ["rater1_seed0", "mean_seed7"])
    assert out["mean_seed7"] == os.path.join(b, "mean_seed7", "predictions")
    os.makedirs(os.path.join(b, "seed_0", "predictions"))  # not a member run
    assert sorted(M.discover_members(b)) == ["mean_seed7", "rater1_seed0"]
    with pytest.raises(ValueError, match="invalid member name"):
        M.predict_members(b, ["seed_0"])
    with pytest.raises(FileNotFoundError, match="no member predictions"):
        M.discover_members(str(tmp_path / "seed_0"))
