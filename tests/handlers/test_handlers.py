"""Ignite handlers driven by a real Engine over a few iterations."""

import csv

import monai.handlers as mh
import pytest
import torch
from ignite.engine import Engine, Events

from calibseg.binning import compute_bin_stats
from calibseg.handlers import (
    BinningDataHandler,
    CalibrationError,
    CalibrationErrorHandler,
    ReliabilityDiagramHandler,
)

K = 6


def _batches(calibrated, n_iter=3, b=2, c=3, shape=(6, 6), empty=((1, 0, 2),)):
    """Iterations of {"pred", "label", "case"}; `empty` = (iteration, case, class) without GT."""
    out = []
    for i in range(n_iter):
        p, y = calibrated(b=b, c=c, shape=shape, seed=i)
        out.append({"pred": p, "label": y, "case": [f"c{i}_{j}" for j in range(b)]})
    for it, case, cls in empty:
        y = out[it]["label"]
        y[case, 0] += y[case, cls]  # move the class's voxels to background
        y[case, cls] = 0
    return out


def _engine():
    return Engine(lambda e, batch: {"pred": batch["pred"], "label": batch["label"]})


def _all(data, key):
    return torch.cat([d[key] for d in data])


def _pair(o):
    return o["pred"], o["label"]


def test_binning_data_handler_outputs(calibrated):
    data = _batches(calibrated)
    eng = _engine()
    seen = []
    BinningDataHandler(num_bins=K).attach(eng)
    eng.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append({k: v.clone() for k, v in e.state.output.items() if "binning" in k}),
    )
    eng.run(data, max_epochs=2)
    assert len(seen) == 6
    assert seen[0]["iteration_binning"].shape == (2, 3, 3, K)
    assert seen[2]["running_binning_data"].shape == (6, 3, 3, K)
    assert seen[3]["running_binning_data"].shape == (2, 3, 3, K)  # reset at the new epoch
    ref = compute_bin_stats(_all(data, "pred"), _all(data, "label"), K)
    mp, mg, cnt = ref.means()
    torch.testing.assert_close(
        seen[2]["running_binning_data"], torch.stack([mp, mg, cnt], 2), equal_nan=True
    )
    tmp, tmg, tcnt = (t[0] for t in ref.total().means())
    torch.testing.assert_close(
        seen[-1]["aggregated_binning_data"], torch.stack([tmp, tmg, tcnt], 1), equal_nan=True
    )


def test_binning_data_handler_list_output_and_bad_output(calibrated):
    data = _batches(calibrated, n_iter=2)
    eng = Engine(
        lambda e, b: [{"pred": p, "label": y} for p, y in zip(b["pred"], b["label"], strict=True)]
    )
    BinningDataHandler(num_bins=K).attach(eng)
    eng.run(data, max_epochs=1)
    out = eng.state.output
    assert isinstance(out, list) and out[1]["iteration_binning"].shape == (1, 3, 3, K)
    assert out[0]["running_binning_data"].shape == (4, 3, 3, K)
    bad = Engine(lambda e, b: (b["pred"], b["label"]))
    BinningDataHandler(num_bins=K, output_transform=lambda o: o).attach(bad)
    with pytest.raises(TypeError, match="dict"):
        bad.run(data, max_epochs=1)


@pytest.mark.parametrize("reduction", ["expected", "maximum"])
def test_calibration_error_matches_monai_handler(calibrated, reduction):
    data = _batches(calibrated)
    eng = _engine()
    kw = dict(num_bins=K, include_background=False, calibration_reduction=reduction)
    CalibrationError(**kw, metric_reduction="mean_batch", output_transform=_pair).attach(
        eng, "ours"
    )
    mh.CalibrationError(**kw, metric_reduction="mean_batch", output_transform=_pair).attach(
        eng, "monai"
    )
    eng.run(data, max_epochs=1)
    torch.testing.assert_close(
        eng.state.metrics["ours"], eng.state.metrics["monai"], atol=1e-6, rtol=0
    )
    assert eng.state.metric_details["ours"].shape == (6, 2)


def test_calibration_error_iteration_average_and_reuse_of_binning_data(calibrated, monkeypatch):
    from calibseg.handlers import calibration as hc

    data = _batches(calibrated)
    eng = _engine()
    BinningDataHandler(num_bins=K).attach(eng)
    CalibrationError(num_bins=K, average="iteration", output_transform=_pair).attach(eng, "ECE")

    def no_second_binning(*a, **k):
        raise AssertionError("binned again although BinningDataHandler binned the same tensors")

    # same tensors, bins and edge rule: the values must come from iteration_binning
    monkeypatch.setattr(hc, "bin_output", no_second_binning)
    eng.run(data, max_epochs=1)
    per_iter = [
        compute_bin_stats(d["pred"], d["label"], K).errors()["ece"].mean().item() for d in data
    ]
    assert eng.state.metrics["ECE"] == pytest.approx(sum(per_iter) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="average"):
        CalibrationError(average="epoch")
    with pytest.raises(ValueError, match="over images"):
        CalibrationError(average="iteration", metric_reduction="mean_channel")


def test_calibration_error_handler_macro_micro_missing_and_csv(calibrated, tmp_path):
    data = _batches(calibrated)
    eng = _engine()
    h = CalibrationErrorHandler(
        num_bins=K, class_names=["bg", "a", "b"], output_dir=str(tmp_path), prefix="cal"
    )
    h.attach(eng)
    eng.run(data, max_epochs=1)
    stats = compute_bin_stats(_all(data, "pred"), _all(data, "label"), K)
    per_case = stats.errors()
    r = h.results
    assert r["case_names"] == ["c0_0", "c0_1", "c1_0", "c1_1", "c2_0", "c2_1"]
    assert r["missing"].nonzero().tolist() == [[2, 2]]
    torch.testing.assert_close(r["macro"]["ace"], per_case["ace"].mean(0))
    torch.testing.assert_close(r["micro"]["ece"], stats.total().errors()["ece"][0])
    assert eng.state.metrics["cal_ece_macro"] == pytest.approx(per_case["ece"].mean().item())
    rows = list(csv.DictReader(open(tmp_path / "cal_per_case.csv")))
    assert len(rows) == 18
    row = next(x for x in rows if x["case"] == "c1_0" and x["class"] == "b")
    assert row["missing"] == "1" and float(row["ece"]) == pytest.approx(
        per_case["ece"][2, 2].item(), rel=1e-5
    )
    summary = {x["class"]: x for x in csv.DictReader(open(tmp_path / "cal_summary.csv"))}
    assert summary["b"]["n_missing"] == "1" and summary["a"]["n_cases"] == "6"
    assert float(summary["a"]["mce_micro"]) == pytest.approx(r["micro"]["mce"][1].item(), rel=1e-5)


def test_calibration_error_handler_skips_missing_classes(calibrated):
    data = _batches(calibrated)
    eng = _engine()
    h = CalibrationErrorHandler(num_bins=K, include_background=False, skip_missing_classes=True)
    h.attach(eng)
    eng.run(data, max_epochs=1)
    p, y = _all(data, "pred")[:, 1:], _all(data, "label")[:, 1:]
    keep = [0, 1, 3, 4, 5]  # case 2 has no class "b" (index 1 here)
    stats_b = compute_bin_stats(p[keep, 1:], y[keep, 1:], K)
    torch.testing.assert_close(h.results["macro"]["ece"][1], stats_b.errors()["ece"][:, 0].mean())
    torch.testing.assert_close(h.results["micro"]["ece"][1], stats_b.total().errors()["ece"][0, 0])
    assert h.names_of_classes == ["class_1", "class_2"]


def test_reliability_handler_per_epoch(calibrated, tmp_path):
    data = _batches(calibrated, n_iter=2)
    eng = _engine()
    BinningDataHandler(num_bins=K).attach(eng)
    h = ReliabilityDiagramHandler(
        output_dir=str(tmp_path),
        num_bins=K,
        include_background=False,
        class_names=["bg", "a", "b"],
        draw_case_diagrams=True,
        when="epoch",
        figsize=(2, 2),
        draw_case_histograms=False,
        draw_dataset_histograms=False,
    )
    h.attach(eng)
    eng.run(data[:1], max_epochs=2)
    for epoch in (1, 2):
        files = sorted(p.name for p in (tmp_path / f"epoch_{epoch}").iterdir())
        assert files == [
            "c0_0_reliability_diagram.png",
            "c0_1_reliability_diagram.png",
            "dataset_reliability_diagram.png",
        ]
    stats = compute_bin_stats(data[0]["pred"][:, 1:], data[0]["label"][:, 1:], K)
    assert h.heatmap.shape == (2, K, K)
    assert int(h.heatmap.sum()) == int((stats.weight > 0).sum())
    torch.testing.assert_close(h.aggregated[:, 2], stats.total().weight[0].double())


def test_reliability_handler_bad_arguments(calibrated):
    with pytest.raises(ValueError, match="output_dir"):
        ReliabilityDiagramHandler(output_dir="")
    with pytest.raises(ValueError, match="output_dir"):
        ReliabilityDiagramHandler(3)  # draws the dataset figure by default, as the paper's code
    with pytest.raises(ValueError, match="when"):
        ReliabilityDiagramHandler(output_dir="x", when="iteration")
    with pytest.raises(ValueError, match="3 class_names given for num_classes=2"):
        ReliabilityDiagramHandler(2, output_dir="x", class_names=["a", "b", "c"])
    eng = _engine()
    ReliabilityDiagramHandler(3, output_dir="unused", num_bins=K).attach(eng)
    ReliabilityDiagramHandler(2, output_dir="unused", num_bins=K).attach(eng)
    with pytest.raises(ValueError, match="3 channels but num_classes=2"):
        eng.run(_batches(calibrated, n_iter=1, empty=()), max_epochs=1)
    eng = _engine()
    ReliabilityDiagramHandler(output_dir="unused", num_bins=K, class_names=["a", "b"]).attach(eng)
    with pytest.raises(ValueError, match="2 class_names given for 3 channels"):
        eng.run(_batches(calibrated, n_iter=1, empty=()), max_epochs=1)


def _edge_batch():
    """Hand example, 2 bins: p = [edge, 0.2], y = [1, 0] and a second prediction 0.7."""
    from calibseg.binning import bin_edges

    e = float(bin_edges(2)[1])  # the inner edge (just above 0.5)
    p = torch.tensor([[[e, 0.2]]])
    return {"pred": p, "pred2": torch.full_like(p, 0.7), "label": torch.tensor([[[1.0, 0.0]]])}


def test_handlers_honour_their_own_right_and_output_transform():
    batch = _edge_batch()
    e = float(batch["pred"][0, 0, 0])
    # right=False: both values in bin 0 → |(e + 0.2)/2 − 1/2|
    # right=True: e alone in bin 1 (gap 1 − e), 0.2 in bin 0 (gap 0.2) → mean of the two
    by_hand = {False: abs((e + 0.2) / 2 - 0.5), True: ((1 - e) + 0.2) / 2}
    for right in (False, True):
        eng = Engine(lambda en, b: dict(b))
        BinningDataHandler(num_bins=2, right=False).attach(eng)
        CalibrationError(num_bins=2, right=right, output_transform=_pair).attach(eng, "ECE")
        # its own transform: the second prediction, constant 0.7 vs targets 1, 0 → |0.7 − 0.5|
        other = CalibrationErrorHandler(
            num_bins=2,
            right=right,
            output_transform=lambda o: (o["pred2"], o["label"]),
        )
        other.attach(eng)
        eng.run([batch], max_epochs=1)
        assert eng.state.metrics["ECE"] == pytest.approx(by_hand[right], abs=1e-6)
        assert other.results["per_case"]["ece"].item() == pytest.approx(0.2, abs=1e-6)
