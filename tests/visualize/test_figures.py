"""Reliability figures: files written, readable, of the expected size and not blank."""

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from calibseg.binning import compute_bin_stats
from calibseg.visualize import draw_case_reliability_diagrams, draw_dataset_reliability_diagrams

SMALL = {"figsize": (2.0, 2.0), "savefig_kwargs": {"dpi": 60}}


@pytest.fixture(scope="module")
def stats():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 2, 10, 10, generator=g) * 3, 1)
    y = (torch.rand(3, 2, 10, 10, generator=g) < p).float()
    y[2, 1] = 0  # a class missing from one case
    return compute_bin_stats(p, y, 8)


def _check_png(path, min_w, min_h):
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not blank
    # coloured (non-grey) pixels: bars or the heat map were drawn
    assert (np.ptp(rgb, axis=-1) > 0.2).mean() > 0.005
    return img


def test_case_diagrams_png(tmp_path, stats):
    out = tmp_path / "figs"  # created on demand
    paths = draw_case_reliability_diagrams(
        stats, str(out), case_names=["case/01", "b", "c"], class_names=["bg", "kidney"], **SMALL
    )
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "case_01_reliability_diagram.png",
        "b_reliability_diagram.png",
        "c_reliability_diagram.png",
    ]
    img = _check_png(paths[0], 200, 150)
    # two panels side by side: wider than tall
    assert img.shape[1] > img.shape[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in paths)


def test_dataset_diagram_png_with_average_panel(tmp_path, stats):
    (path,) = draw_dataset_reliability_diagrams(
        stats, tmp_path, class_names=["bg", "kidney"], average_over_classes=True, **SMALL
    )
    assert path.endswith("dataset_reliability_diagram.png")
    img = _check_png(path, 300, 150)
    (narrow,) = draw_dataset_reliability_diagrams(
        stats, tmp_path / "n", draw_histograms=False, show_aggregate=False, **SMALL
    )
    # three panels (two classes + average) make a wider figure than two
    assert img.shape[1] > mpimg.imread(narrow).shape[1]


def test_pdf_and_options(tmp_path, stats):
    (path,) = draw_dataset_reliability_diagrams(
        stats,
        tmp_path,
        fmt="pdf",
        cmap="magma",
        figsize=(3, 2),
        rc_params={"font.size": 6},
        title="Validation ({n} cases)",
    )
    data = open(path, "rb").read()
    assert path.endswith(".pdf") and data.startswith(b"%PDF") and len(data) > 2000
    paths = draw_case_reliability_diagrams(
        stats, tmp_path, case_names=["a", "b", "c"], fmt="pdf", draw_histograms=False, color="k"
    )
    assert all(open(p, "rb").read(4) == b"%PDF" for p in paths)


def test_bad_input(tmp_path, stats):
    with pytest.raises(ValueError, match="3 class_names .* 2 classes"):
        draw_dataset_reliability_diagrams(stats, tmp_path, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="2 case_names given for 3 cases"):
        draw_case_reliability_diagrams(stats, tmp_path, case_names=["a", "b"])
    with pytest.raises(ValueError, match="output_dir"):
        draw_dataset_reliability_diagrams(stats, None)
    with pytest.raises(ValueError, match="fmt"):
        draw_dataset_reliability_diagrams(stats, tmp_path, fmt="jpg")
    with pytest.raises(TypeError, match="BinStats"):
        draw_dataset_reliability_diagrams(torch.zeros(2, 3), tmp_path)
    with pytest.raises(ValueError, match="square"):
        draw_dataset_reliability_diagrams(torch.zeros(1, 2, 3), tmp_path)
    with pytest.raises(ValueError, match="binning_data"):  # the paper's rule
        draw_dataset_reliability_diagrams(torch.zeros(1, 3, 3), tmp_path)
    with pytest.raises(TypeError, match="unknown drawing option"):
        draw_dataset_reliability_diagrams(stats, tmp_path, colour="red")
    assert list(tmp_path.iterdir()) == []
