"""`src.metrics` / `src.handlers` of the mL1-ACE paper's code → calibseg: same calls, same numbers.

References: MONAI's calibration metric and handler (upstreamed from the paper's code, same
signatures) and hand-counted heat maps.
"""

from __future__ import annotations

import inspect
import itertools

import monai.handlers
import monai.metrics
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine

from calibseg.handlers import (
    BinningDataHandler,
    CalibrationError,
    CalibrationErrorHandler,
    ReliabilityDiagramHandler,
)
from calibseg.metrics import (
    CalibrationErrorMetric,
    CalibrationReduction,
    ReliabilityDiagramMetric,
    calculate_heatmap_from_bins,
    calibration_binning,
)
from calibseg.visualize import draw_case_reliability_diagrams, draw_dataset_reliability_diagrams

_FIGURES = [
    ("figsize", (6, 6)),
    ("class_names", None),
    ("draw_case_diagrams", False),
    ("draw_case_histograms", False),
    ("case_name_transform", None),
    ("print_case_ece", True),
    ("print_case_ace", True),
    ("print_case_mce", True),
    ("draw_dataset_diagrams", True),
    ("draw_dataset_histograms", False),
    ("draw_dataset_average_over_classes", False),
    ("dataset_imshow_kwargs", {}),
    ("savefig_kwargs", {}),
    ("rc_params", {}),
]
PAPER = {
    ReliabilityDiagramMetric: [
        ("num_classes", None),
        ("num_bins", 20),
        ("include_background", True),
        ("output_dir", None),
        *_FIGURES,
        ("right", False),
    ],
    ReliabilityDiagramHandler: [
        ("num_classes", None),
        ("num_bins", 20),
        ("include_background", True),
        ("output_dir", None),
        *_FIGURES,
        ("output_transform", None),
        ("save_details", True),
    ],
    CalibrationErrorMetric: [
        ("num_bins", 20),
        ("include_background", True),
        ("calibration_reduction", "expected"),
        ("metric_reduction", "mean"),
        ("get_not_nans", False),
        ("right", False),
    ],
    calibration_binning: [("y_pred", None), ("y", None), ("num_bins", 20), ("right", False)],
    calculate_heatmap_from_bins: [("mean_gt_per_bin", None)],
    CalibrationError: [
        ("num_bins", 20),
        ("include_background", True),
        ("calibration_reduction", "expected"),
        ("metric_reduction", "mean"),
        ("output_transform", None),
        ("save_details", True),
    ],
    BinningDataHandler: [("num_bins", 20), ("include_background", True), ("right", False)],
    CalibrationErrorHandler: [
        ("num_bins", 20),
        ("include_background", True),
        ("output_dir", "./"),
        ("summary_ops", None),
        ("delimiter", ","),
        ("output_type", "csv"),
        ("meta_batch_transform", None),
    ],
    draw_case_reliability_diagrams: [
        ("binning_data", None),
        ("output_dir", None),
        ("figsize", (6, 6)),
        ("case_names", ["case1", "case2", "case3"]),
        ("class_names", ["class1", "class2", "class2"]),
        ("print_ece", True),
        ("print_ace", True),
        ("print_mce", True),
        ("draw_histograms", True),
        ("savefig_kwargs", {}),
        ("rc_params", {}),
    ],
    draw_dataset_reliability_diagrams: [
        ("heatmap", None),
        ("output_dir", None),
        ("figsize", (6, 6)),
        ("class_names", ["class1", "class2", "class2"]),
        ("draw_histograms", True),
        ("binning_data", None),
        ("imshow_kwargs", {}),
        ("savefig_kwargs", {}),
        ("rc_params", {}),
    ],
}
# defaults that only change how figures look or are mutable in the paper's code
_STYLE = {
    "figsize",
    "dataset_imshow_kwargs",
    "imshow_kwargs",
    "savefig_kwargs",
    "rc_params",
    "case_names",
    "class_names",
}
# identity / "./" in the paper's code: None here means the same (identity) or, for
# CalibrationErrorHandler's output_dir, no files unless a folder is given (docs/dropin.md)
_NONE_MEANS_DEFAULT = {"num_classes", "output_transform", "meta_batch_transform", "output_dir"}


@pytest.mark.parametrize("obj", list(PAPER), ids=lambda o: o.__name__)
def test_positional_order_and_defaults_are_the_papers(obj):
    params = list(inspect.signature(obj).parameters.values())
    want = PAPER[obj]
    assert [p.name for p in params[: len(want)]] == [n for n, _ in want]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(want)])
    for p, (name, default) in zip(params, want, strict=False):
        got = (
            None if p.default is inspect.Parameter.empty else getattr(p.default, "value", p.default)
        )
        if name in _STYLE or (name == "draw_dataset_diagrams" and obj is ReliabilityDiagramMetric):
            continue  # None = "as the paper's" (no figure without a folder) / style only
        if name in _NONE_MEANS_DEFAULT:
            continue  # required / identity / "./" in the paper's code; optional here
        assert got == default, name


def _data(calibrated, b=3):
    """Three classes on 8 × 8; case 0 lacks class 2 (its voxels join the background)."""
    p, y = calibrated(b=b)
    y[0, 2] = 0  # case 0 lacks class 2
    y[0, 0] = 1 - y[0, 1]
    return p, y


@pytest.mark.parametrize("right", [False, True])
def test_calibration_binning_and_error_metric_match_monai(calibrated, right):
    p, y = _data(calibrated)
    ours = calibration_binning(p, y, 7, right)
    ref = monai.metrics.calibration_binning(p, y, 7, right)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.float(), b.float(), equal_nan=True)
    for red in CalibrationReduction:
        args = (7, False, red.value, "mean_batch", True, right)
        m, r = CalibrationErrorMetric(*args), monai.metrics.CalibrationErrorMetric(*args)
        m(y_pred=p, y=y)
        r(y_pred=p, y=y)
        (f, n), (fr, nr) = m.aggregate(), r.aggregate()
        torch.testing.assert_close(f.float(), fr.float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(n.float(), nr.float())


def test_calibration_error_handler_matches_monai(calibrated):
    p, y = _data(calibrated)
    values = {}
    for name, cls in (("ours", CalibrationError), ("monai", monai.handlers.CalibrationError)):
        eng = Engine(lambda e, batch: batch)
        cls(
            num_bins=5,
            include_background=False,
            calibration_reduction="average",
            metric_reduction="mean",
            output_transform=from_engine(["pred", "label"]),
            save_details=True,
        ).attach(eng, "ace")
        eng.run([{"pred": p[:2], "label": y[:2]}, {"pred": p[2:], "label": y[2:]}])
        values[name] = (eng.state.metrics["ace"], eng.state.metric_details["ace"])
    assert values["ours"][0] == pytest.approx(float(values["monai"][0]), abs=1e-6)
    torch.testing.assert_close(
        values["ours"][1].float(), values["monai"][1].float(), equal_nan=True, atol=1e-6, rtol=0
    )


def _heatmap_by_hand(p, y, num_bins, first_class=0):
    """Per case and class, MONAI's bin accuracies counted into accuracy bins with a loop:
    bin j holds (e_j, e_j+1] of e = float32 linspace(0, 1 + eps, J + 1); row 0 = highest."""
    _, mean_gt, _ = monai.metrics.calibration_binning(
        p[:, first_class:], y[:, first_class:], num_bins
    )
    n, c, k = mean_gt.shape
    edges = np.linspace(0, 1 + np.finfo(np.float32).eps, num_bins + 1, dtype=np.float32)
    out = torch.zeros(c, num_bins, k, dtype=torch.int64)
    for i in range(n):
        for ci in range(c):
            for ki in range(k):
                v = np.float32(mean_gt[i, ci, ki])
                if not np.isnan(v):
                    j = next(j for j in range(num_bins) if v <= edges[j + 1])
                    out[ci, num_bins - 1 - j, ki] += 1
    return out


def test_heatmap_by_keyword_and_on_edges():
    nan = float("nan")
    # accuracies on inner edges (.5, .25) fall in the lower bin, 1.0 in the top one
    mean_gt = torch.tensor([[[0.5, 1.0, nan, 0.25]], [[0.0, 0.75, 0.2, 0.3]]])
    h = calculate_heatmap_from_bins(mean_gt_per_bin=mean_gt)
    want = torch.zeros(1, 4, 4, dtype=torch.int64)
    for col, rows in {0: (2, 3), 1: (0, 1), 2: (3,), 3: (3, 2)}.items():
        for r in rows:  # row 0 = accuracies in (.75, 1], row 3 = [0, .25]
            want[0, r, col] += 1
    assert torch.equal(h, want)


def test_reliability_metric_with_the_papers_bundle_arguments(calibrated, tmp_path):
    p, y = _data(calibrated)
    counter = itertools.count()
    m = ReliabilityDiagramMetric(
        num_classes=3,
        num_bins=5,
        include_background=False,
        output_dir=str(tmp_path),
        figsize=[4.8, 3.6],
        class_names=["bg", "a", "b"],
        draw_case_diagrams=True,
        draw_case_histograms=True,
        case_name_transform=lambda y: [f"img{next(counter)}" for _ in range(len(y))],
        print_case_ece=True,
        print_case_ace=True,
        print_case_mce=True,
        draw_dataset_diagrams=True,
        draw_dataset_histograms=True,
        draw_dataset_average_over_classes=True,
        dataset_imshow_kwargs={"cmap": "YlOrRd"},
        savefig_kwargs={"format": "pdf", "dpi": 50, "transparent": False, "bbox_inches": "tight"},
    )
    m(y_pred=p[:2], y=y[:2])
    m(y_pred=p[2:], y=y[2:])
    heat = m.aggregate()
    assert torch.equal(heat, _heatmap_by_hand(p, y, 5, first_class=1))
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "dataset_reliability_diagram.pdf",
        "img0_reliability_diagram.pdf",
        "img1_reliability_diagram.pdf",
        "img2_reliability_diagram.pdf",
    ]
    with pytest.raises(ValueError, match="3 channels but num_classes=4"):
        ReliabilityDiagramMetric(4, 5)(y_pred=p, y=y)
    # imshow options reach imshow, as in the paper's code (a norm replaces vmin/vmax)
    out = tmp_path / "lognorm"
    m = ReliabilityDiagramMetric(3, 5, output_dir=str(out), dataset_imshow_kwargs={"norm": "log"})
    m(y_pred=p, y=y)
    m.aggregate()
    assert [f.name for f in out.iterdir()] == ["dataset_reliability_diagram.png"]


def test_reliability_handler_as_evaluator_metric(calibrated, tmp_path):
    """The paper's inference config: the handler under a SupervisedEvaluator's metrics."""
    p, y = _data(calibrated, b=4)
    items = [{"image": p[i], "label": y[i], "case": f"case{i}"} for i in range(4)]
    handler = ReliabilityDiagramHandler(
        num_classes=3,
        num_bins=5,
        include_background=False,
        output_dir=str(tmp_path / "reliability_diagrams"),
        figsize=[4.8, 3.6],
        class_names=["bg", "a", "b"],
        draw_case_diagrams=False,  # drawn in the metric test above
        draw_case_histograms=True,
        draw_dataset_diagrams=True,
        draw_dataset_histograms=True,
        draw_dataset_average_over_classes=True,
        dataset_imshow_kwargs={"cmap": "YlOrRd"},
        savefig_kwargs={"format": "pdf", "dpi": 100, "transparent": False, "bbox_inches": "tight"},
        output_transform=from_engine(["pred", "label"]),
        save_details=True,
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=2),
        network=torch.nn.Identity(),
        key_val_metric={
            "mean_dice": monai.handlers.MeanDice(
                include_background=False, output_transform=from_engine(["pred", "label"])
            )
        },
        additional_metrics={"reliability_diagram": handler},
    )
    evaluator.run()
    heat = evaluator.state.metrics["reliability_diagram"]
    assert torch.equal(heat, _heatmap_by_hand(p, y, 5, first_class=1))
    details = evaluator.state.metric_details["reliability_diagram"]
    _, mean_gt, counts = monai.metrics.calibration_binning(p[:, 1:], y[:, 1:], 5)
    assert details.shape == (4, 2, 3, 5)
    torch.testing.assert_close(details[:, :, 1].float(), mean_gt, equal_nan=True)
    torch.testing.assert_close(details[:, :, 2].float(), counts)
    files = sorted(f.name for f in (tmp_path / "reliability_diagrams").iterdir())
    assert files == ["dataset_reliability_diagram.pdf"]
    assert handler.case_names == [f"case{i}" for i in range(4)]


def test_binning_data_handler_without_background_matches_monai(calibrated):
    """The paper's ``BinningDataHandler(num_bins, include_background, right)``: per-iteration
    bins of the kept channels; pooled bins of the epoch from MONAI's per-case bins by hand."""
    p, y = _data(calibrated, b=4)
    eng = Engine(lambda e, batch: dict(batch))
    BinningDataHandler(5, False, True).attach(eng)
    seen = []
    eng.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    eng.run([{"pred": p[:2], "label": y[:2]}, {"pred": p[2:], "label": y[2:]}])
    mp, mg, cnt = monai.metrics.calibration_binning(p[:, 1:], y[:, 1:], 5, right=True)
    ref = torch.stack([mp, mg, cnt], dim=2)  # [N, C - 1, 3, K]
    for i, out in enumerate(seen):
        torch.testing.assert_close(
            out["iteration_binning"].float(), ref[2 * i : 2 * i + 2], equal_nan=True
        )
    torch.testing.assert_close(seen[-1]["running_binning_data"].float(), ref, equal_nan=True)
    counts = cnt.sum(0)
    pooled_p = torch.nansum(mp * cnt, 0) / counts  # voxel-weighted: calibseg's exact pooling
    pooled_gt = torch.nansum(mg * cnt, 0) / counts
    agg = seen[-1]["aggregated_binning_data"].float()
    torch.testing.assert_close(agg[:, 2], counts)
    torch.testing.assert_close(agg[:, 0], pooled_p, equal_nan=True)
    torch.testing.assert_close(agg[:, 1], pooled_gt, equal_nan=True)


def test_calibration_error_positional_arguments_are_the_papers(calibrated):
    p, y = _data(calibrated)
    eng = Engine(lambda e, batch: batch)
    # (num_bins, include_background, calibration_reduction, metric_reduction, output_transform,
    # save_details) as in the paper's code
    CalibrationError(
        5, False, "maximum", "mean_batch", from_engine(["pred", "label"]), True
    ).attach(eng, "mce")
    eng.run([{"pred": p, "label": y}])
    ref = monai.metrics.CalibrationErrorMetric(5, False, "maximum", "mean_batch")
    ref(y_pred=p, y=y)
    torch.testing.assert_close(
        torch.as_tensor(eng.state.metrics["mce"]).float(), ref.aggregate().float()
    )


def _read_report(path, delimiter):
    with open(path) as f:
        rows = [line.rstrip("\n").split(delimiter) for line in f]
    return rows[0], {r[0]: [float(v) for v in r[1:]] for r in rows[1:]}


def test_calibration_error_handler_with_the_papers_arguments(calibrated, tmp_path):
    """The paper's ``CalibrationErrorHandler`` under a SupervisedEvaluator: per-case (macro)
    and pooled (micro) errors in MONAI's report files; values from MONAI's metric and bins."""
    p, y = _data(calibrated, b=4)
    items = [{"image": p[i], "label": y[i], "case": f"case{i}"} for i in range(4)]
    handler = CalibrationErrorHandler(
        5,
        False,
        str(tmp_path),
        ["mean", "max"],
        ";",
        "csv",
        lambda batch: [{"filename_or_obj": f"/data/{b['case']}.nii.gz"} for b in batch],
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=2),
        network=torch.nn.Identity(),
    )
    handler.attach(evaluator)
    evaluator.run()
    per_case = {}
    for name, red in (("ece", "expected"), ("ace", "average"), ("mce", "maximum")):
        m = monai.metrics.CalibrationErrorMetric(5, False, red, "none")
        m(y_pred=p, y=y)
        per_case[name] = m.aggregate().float()  # [N, C - 1]
    header, raw = _read_report(tmp_path / "macro_ace_raw.csv", ";")
    assert header == ["filename", "class0", "class1", "mean"]
    assert list(raw) == [f"/data/case{i}.nii.gz" for i in range(4)]
    got = torch.tensor([raw[f"/data/case{i}.nii.gz"][:2] for i in range(4)])
    torch.testing.assert_close(got, per_case["ace"], atol=1e-4, rtol=0)  # 4 decimals in the file
    metrics = dict(line.rstrip("\n").split(";", 1) for line in open(tmp_path / "metrics.csv"))
    for name, v in per_case.items():
        assert float(metrics[f"macro_{name}"]) == pytest.approx(v.mean().item(), abs=1e-6)
    # micro: the errors of the bins pooled over the cases (MONAI's per-case bins, by hand)
    mp, mg, cnt = monai.metrics.calibration_binning(p[:, 1:], y[:, 1:], 5)
    counts = cnt.sum(0)
    gap = (torch.nansum(mp * cnt, 0) - torch.nansum(mg * cnt, 0)).abs() / counts
    micro_ece = torch.nansum(gap * counts, -1) / counts.sum(-1)
    assert float(metrics["micro_ece"]) == pytest.approx(micro_ece.mean().item(), abs=1e-6)
    # case 0 lacks class 2 (column 1 once the background is dropped)
    assert metrics["missing_classes"] == "[False, True]"
    header, summary = _read_report(tmp_path / "macro_mce_summary.csv", ";")
    assert header == ["class", "mean", "max"]
    assert summary["class1"] == pytest.approx(
        [per_case["mce"][:, 1].mean().item(), per_case["mce"][:, 1].max().item()], abs=1e-4
    )
    # calibseg's own tables are written beside them
    assert (tmp_path / "calibration_per_case.csv").exists()


def test_drawing_functions_with_the_papers_arrays(calibrated, tmp_path):
    """``draw_case_reliability_diagrams(binning_data [B, C, 3, K], output_dir, figsize,
    case_names, …)`` and ``draw_dataset_reliability_diagrams(heatmap [C, K, K], output_dir,
    figsize, class_names, draw_histograms, binning_data [C, 3, K], …)``, positionally."""
    p, y = _data(calibrated)
    binning = torch.stack(monai.metrics.calibration_binning(p, y, 5), dim=2).numpy()
    paths = draw_case_reliability_diagrams(
        binning,
        str(tmp_path),
        (2, 2),
        ["a", "b", "c"],
        ["bg", "x", "y"],
        True,
        False,
        True,
        False,
        {"format": "pdf", "dpi": 40},
        {"font.size": 6},
    )
    assert [x.rsplit("/", 1)[-1] for x in paths] == [
        f"{c}_reliability_diagram.pdf" for c in ("a", "b", "c")
    ]
    heat = calculate_heatmap_from_bins(torch.as_tensor(binning[:, :, 1]))
    pooled = binning[0]  # any [C, 3, K] of the right size
    (path,) = draw_dataset_reliability_diagrams(
        heat.numpy(),
        str(tmp_path),
        (2, 2),
        ["bg", "x", "y"],
        True,
        pooled,
        {"cmap": "YlOrRd"},
        {"dpi": 40},
    )
    assert path.endswith("dataset_reliability_diagram.png")
    with pytest.raises(ValueError, match="binning_data"):
        draw_dataset_reliability_diagrams(heat.numpy(), str(tmp_path), None, None, True)
