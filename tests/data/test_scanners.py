"""Native-layout scanners and validation on tiny fixtures."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from calibseg.data import check_items, get_dataset, scan_multirater
from calibseg.data.scanners import read_acdc_info, scan_decathlon

SHAPE = (8, 8, 4)
IMG = np.zeros(SHAPE, dtype=np.float32)


def _cases(items):
    return [it["case"] for it in items]


def test_acdc_info_cfg_and_gt_fallback(acdc_root):
    spec = get_dataset("acdc17")
    items = spec.scan(acdc_root)
    assert _cases(items) == [
        "patient001_frame01",
        "patient001_frame03",
        "patient002_frame02",
        "patient002_frame05",
        "patient101_frame01",
        "patient101_frame09",
    ]
    by = {it["case"]: it for it in items}
    assert by["patient001_frame01"]["phase"] == "ED" and by["patient001_frame03"]["phase"] == "ES"
    assert by["patient002_frame05"]["phase"] == ""  # no Info.cfg: frames with a _gt file
    assert by["patient101_frame09"]["subset"] == "testing"
    assert by["patient002_frame02"]["group"] == "patient002"
    assert by["patient001_frame03"]["label"].endswith(
        "training/patient001/patient001_frame03_gt.nii.gz"
    )
    assert os.path.isabs(by["patient001_frame03"]["image"])
    assert spec.validate(items) == []


def test_acdc_missing_gt_for_info_frame_is_reported(acdc_root):
    os.remove(os.path.join(acdc_root, "training/patient001/patient001_frame03_gt.nii.gz"))
    spec = get_dataset("acdc17")
    items = spec.scan(acdc_root)
    assert "patient001_frame03" in _cases(items)  # listed because Info.cfg names it
    problems = spec.validate(items)
    assert len(problems) == 1
    assert "patient001_frame03: missing label file" in problems[0]


def test_acdc_info_parsing():
    assert read_acdc_info("ED: 1\nES: 12\nGroup: DCM\n") == {"ED": "1", "ES": "12", "Group": "DCM"}


def test_amos_ct_only_and_max_ct_id(tmp_path, nii, labvol):
    root = tmp_path / "amos"
    for i, sub in ((1, "Tr"), (7, "Tr"), (520, "Tr"), (300, "Va")):
        nii(str(root / f"images{sub}" / f"amos_{i:04d}.nii.gz"), IMG)
        nii(str(root / f"labels{sub}" / f"amos_{i:04d}.nii.gz"), labvol(i, 16))
    spec = get_dataset("amos22")
    items = spec.scan(str(root))
    assert _cases(items) == ["amos_0001", "amos_0007", "amos_0300"]
    assert items[2]["label"].endswith("labelsVa/amos_0300.nii.gz")
    assert _cases(spec.scan(str(root), max_ct_id=5)) == ["amos_0001"]
    assert len(spec.scan(str(root), max_ct_id=1000)) == 4
    assert spec.validate(items) == []
    assert len(spec.class_names) == 16 and spec.class_names[6] == "liver"
    os.remove(root / "labelsTr" / "amos_0007.nii.gz")
    problems = spec.validate(spec.scan(str(root)))
    assert len(problems) == 1 and problems[0].startswith("amos_0007: missing label file")


def test_kits_layout_shape_mismatch_and_corrupt(tmp_path, nii, labvol):
    base = tmp_path / "kits23" / "dataset"
    for i in range(3):
        nii(str(base / f"case_{i:05d}" / "imaging.nii.gz"), IMG)
    nii(str(base / "case_00000" / "segmentation.nii.gz"), labvol(0))
    nii(str(base / "case_00001" / "segmentation.nii.gz"), np.zeros((8, 8, 5), np.uint8))
    (base / "case_00002" / "segmentation.nii.gz").write_bytes(b"definitely not nifti")
    (base / "notes.txt").write_text("ignored")
    spec = get_dataset("kits23")
    items = spec.scan(str(tmp_path / "kits23"))
    assert _cases(items) == ["case_00000", "case_00001", "case_00002"]
    assert _cases(spec.scan(str(base))) == _cases(items)  # root may be dataset/ itself
    problems = check_items(items, in_channels=1)
    assert [(p.case, p.problem.split(":")[0].split(" shape")[0]) for p in problems] == [
        ("case_00001", "label"),
        ("case_00002", "label"),
    ]
    assert "does not match image shape (8, 8, 4)" in problems[0].problem
    assert "unreadable or corrupt" in problems[1].problem


def _kits_case(tmp_path, nii, name="imaging.nii.gz"):
    path = nii(
        str(tmp_path / "d" / "case_00000" / name),
        np.random.default_rng(0).random((16, 16, 16)),
    )
    nii(
        str(tmp_path / "d" / "case_00000" / "segmentation.nii.gz"), np.zeros((16, 16, 16), np.uint8)
    )
    return path


def test_cut_short_download_is_found_without_deep(tmp_path, nii):
    path = _kits_case(tmp_path, nii)
    items = get_dataset("kits23").scan(str(tmp_path / "d"))
    assert check_items(items) == []
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])  # an interrupted download: the header is intact
    problems = check_items(items)
    assert len(problems) == 1 and problems[0].path == path
    # 348-byte header + 4-byte extension flag + 16³ float64 voxels
    assert "truncated" in problems[0].problem and str(352 + 16**3 * 8) in problems[0].problem


def test_short_gzip_stream_and_short_nii_are_found_without_deep(tmp_path, nii):
    path = _kits_case(tmp_path, nii)
    raw = gzip.decompress(open(path, "rb").read())
    with open(path, "wb") as f:  # a complete gzip stream holding half of the file
        f.write(gzip.compress(raw[: len(raw) // 2]))
    items = get_dataset("kits23").scan(str(tmp_path / "d"))
    problems = check_items(items)
    assert len(problems) == 1 and "truncated" in problems[0].problem
    assert f"{len(raw) // 2} bytes decompressed" in problems[0].problem
    # an uncompressed .nii cut short: its size is compared with the header's byte count
    nii_path = tmp_path / "short.nii"
    with open(nii_path, "wb") as f:
        f.write(raw[: len(raw) - 8])
    problems = check_items([{"case": "s", "image": str(nii_path)}])
    assert len(problems) == 1 and f"{len(raw) - 8} bytes" in problems[0].problem


def test_brats_four_channels_nested_root(tmp_path, nii):
    base = tmp_path / "brats" / "BraTS2021_Training_Data"
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        for m in ("t1", "t1ce", "t2", "flair"):
            nii(str(base / case / f"{case}_{m}.nii.gz"), IMG)
        nii(str(base / case / f"{case}_seg.nii.gz"), np.zeros(SHAPE, np.uint8))
    os.remove(base / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz")
    spec = get_dataset("brats21")
    items = spec.scan(str(tmp_path / "brats"))
    assert _cases(items) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert [os.path.basename(p) for p in items[0]["image"]] == [
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t1ce.nii.gz",
        "BraTS2021_00000_t2.nii.gz",
        "BraTS2021_00000_flair.nii.gz",
    ]
    problems = spec.validate(items)
    assert len(problems) == 1 and problems[0].startswith("BraTS2021_00002: missing image file")


def test_channel_count_checked(tmp_path, nii):
    path = nii(str(tmp_path / "img.nii.gz"), np.zeros((*SHAPE, 2), np.float32))
    lab = nii(str(tmp_path / "lab.nii.gz"), np.zeros(SHAPE, np.uint8))
    problems = check_items([{"case": "a", "image": path, "label": lab}], in_channels=1)
    assert [p.problem for p in problems] == ["2 image channels, expected 1"]


def test_multirater_layout(tmp_path, nii, labvol):
    root = tmp_path / "curvas"
    for case, k in (("UKCHLL001", 3), ("UKCHLL002", 2)):
        nii(str(root / case / "image.nii.gz"), IMG)
        for r in range(1, k + 1):
            nii(str(root / case / f"annotation_{r}.nii.gz"), labvol(r))
    nii(str(root / "UKCHLL001" / "annotation_10.nii.gz"), labvol(10))
    (root / "README.txt").write_text("not a case")
    items = scan_multirater(str(root))
    assert _cases(items) == ["UKCHLL001", "UKCHLL002"]
    # numbers sort as numbers (10 after 3); raters 4..9 are missing in every case
    assert [os.path.basename(p) for p in items[0]["raters"]] == [
        f"annotation_{r}.nii.gz" for r in range(1, 11)
    ]
    assert "label" not in items[0]
    problems = check_items(items)
    assert [(p.case, p.problem) for p in problems] == [
        ("UKCHLL001", f"missing rater {r} label file") for r in range(4, 10)
    ] + [("UKCHLL002", f"missing rater {r} label file") for r in range(3, 11)]
    os.remove(root / "UKCHLL001" / "annotation_10.nii.gz")
    items = scan_multirater(str(root))
    assert check_items([items[0]]) == []
    os.makedirs(root / "UKCHLL003")
    nii(str(root / "UKCHLL003" / "image.nii.gz"), IMG)
    problems = check_items(scan_multirater(str(root)))
    assert [(p.case, p.problem) for p in problems] == [
        ("UKCHLL002", "missing rater 3 label file"),
        ("UKCHLL003", "no rater annotations"),
    ]


def test_multirater_missing_rater_keeps_its_number(tmp_path, nii, labvol):
    root = tmp_path / "curvas"
    for case in ("A", "B"):
        nii(str(root / case / "image.nii.gz"), IMG)
        for r in (1, 2, 3):
            nii(str(root / case / f"annotation_{r}.nii.gz"), labvol(r))
    os.remove(root / "B" / "annotation_2.nii.gz")
    items = get_dataset("curvas").scan(str(root))
    b = items[1]["raters"]
    # rater 3 stays rater 3; rater 2's slot names the missing file
    assert [os.path.basename(p) for p in b] == [f"annotation_{r}.nii.gz" for r in (1, 2, 3)]
    assert os.path.exists(b[2]) and not os.path.exists(b[1])
    problems = get_dataset("curvas").validate(items)
    assert problems == [f"B: missing rater 2 label file ({b[1]})"]


def test_decathlon_without_dataset_json(tmp_path, nii, labvol):
    for c in ("b", "a"):
        nii(str(tmp_path / "imagesTr" / f"{c}.nii.gz"), IMG)
        nii(str(tmp_path / "labelsTr" / f"{c}.nii.gz"), labvol(1))
        for r in (2, 1):
            nii(str(tmp_path / "labelsTr" / f"{c}_rater{r}.nii.gz"), labvol(r))
    items = sorted(scan_decathlon(str(tmp_path)), key=lambda it: it["case"])
    assert _cases(items) == ["a", "b"]
    assert [os.path.basename(p) for p in items[0]["raters"]] == [
        "a_rater1.nii.gz",
        "a_rater2.nii.gz",
    ]


def test_decathlon_dataset_json_relative_paths_and_missing_rater(tmp_path, nii, labvol):
    nii(str(tmp_path / "imagesTr" / "x.nii.gz"), IMG)
    nii(str(tmp_path / "labelsTr" / "x.nii.gz"), labvol(0))
    entry = {
        "image": "./imagesTr/x.nii.gz",
        "label": "labelsTr/x.nii.gz",
        "raters": ["./labelsTr/x_r1.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [entry]}))
    items = get_dataset("synthetic").scan(str(tmp_path))
    assert items == [
        {
            "case": "x",
            "image": str(tmp_path / "imagesTr" / "x.nii.gz"),
            "label": str(tmp_path / "labelsTr" / "x.nii.gz"),
            "raters": [str(tmp_path / "labelsTr" / "x_r1.nii.gz")],
        }
    ]
    assert [p.problem for p in check_items(items)] == ["missing rater 1 label file"]


@pytest.mark.parametrize("name", ["acdc17", "amos22", "brats21", "curvas", "kits23", "synthetic"])
def test_missing_or_empty_root(tmp_path, name):
    spec = get_dataset(name)
    with pytest.raises(FileNotFoundError, match="data root not found"):
        spec.scan(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no cases found"):
        spec.scan(str(tmp_path))
