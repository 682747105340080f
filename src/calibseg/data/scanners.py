"""Scanners: a dataset's native folder layout → data items.

An item is ``{"case": id, "image": path | [paths], "label": path, ...}`` with absolute paths
(or URLs when the root is an ``s3://`` URL). A scanner lists what the layout says should be
there: an expected label that is missing on disk is still listed, so that
:func:`calibseg.data.validate.check_items` can report it.
"""

from __future__ import annotations

import re

from calibseg import storage

__all__ = [
    "scan_acdc17",
    "scan_amos22",
    "scan_kits23",
    "scan_brats21",
    "scan_decathlon",
    "scan_multirater",
    "read_acdc_info",
]

_NII = re.compile(r"\.nii(\.gz)?$")


def _require_root(root: str, layout: str) -> str:
    root = str(root).rstrip("/") if storage.is_remote(root) else str(root)
    if not storage.isdir(root):
        raise FileNotFoundError(
            f"data root not found (or not a folder): {root} — expected {layout}"
        )
    return root


def _no_cases(root: str, layout: str) -> ValueError:
    return ValueError(f"no cases found under {root}: expected the layout {layout}")


def read_acdc_info(text: str) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``key: value`` lines) into a dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def scan_acdc17(root: str) -> list[dict]:
    """ACDC 2017: ``training|testing/patientNNN/patientNNN_frameFF.nii.gz`` + ``_gt`` labels.

    ``root`` is the folder holding ``training``/``testing`` or the archive's root with them in
    ``database/`` (the official ``ACDC/database/{training,testing}``).

    With ``Info.cfg`` the ED and ES frames are taken (labels expected for both); without it,
    every frame that has a ``_gt`` file. Items carry ``"group"`` = patient id (so both frames
    of a patient stay in one split), ``"subset"`` and ``"phase"`` ("ED"/"ES"/"").
    """
    layout = "training|testing/patientNNN/patientNNN_frameFF.nii.gz (+ _gt, Info.cfg)"
    root = _require_root(root, layout)
    # the official archive unpacks as ACDC/database/{training,testing}: accept its root too
    database = storage.join(root, "database")
    if not any(storage.isdir(storage.join(root, s)) for s in ("training", "testing")) and (
        storage.isdir(database)
    ):
        root = database
    items = []
    for subset in ("training", "testing"):
        sub = storage.join(root, subset)
        if not storage.isdir(sub):
            continue
        for patient in storage.ls(sub):
            if not re.fullmatch(r"patient\d+", patient):
                continue
            pdir = storage.join(sub, patient)
            names = set(storage.ls(pdir))
            frames: dict[int, str] = {}
            if "Info.cfg" in names:
                info = read_acdc_info(storage.read_text(storage.join(pdir, "Info.cfg")))
                try:
                    ed, es = int(info["ED"]), int(info["ES"])
                except (KeyError, ValueError):
                    raise ValueError(
                        f"{storage.join(pdir, 'Info.cfg')} lacks integer 'ED:' and 'ES:' lines."
                    ) from None
                frames = {ed: "ED"} if ed == es else {ed: "ED", es: "ES"}
            else:
                for n in sorted(names):
                    m = re.fullmatch(rf"{patient}_frame(\d+)_gt\.nii(\.gz)?", n)
                    if m:
                        frames[int(m.group(1))] = ""
            for frame, phase in sorted(frames.items()):
                stem = f"{patient}_frame{frame:02d}"
                ext = (
                    ".nii"
                    if f"{stem}.nii" in names and f"{stem}.nii.gz" not in names
                    else ".nii.gz"
                )
                gt_ext = (
                    ".nii"
                    if f"{stem}_gt.nii" in names and f"{stem}_gt.nii.gz" not in names
                    else ".nii.gz"
                )
                items.append(
                    {
                        "case": stem,
                        "image": storage.join(pdir, stem + ext),
                        "label": storage.join(pdir, stem + "_gt" + gt_ext),
                        "group": patient,
                        "subset": subset,
                        "phase": phase,
                    }
                )
    if not items:
        raise _no_cases(root, layout)
    return items


def scan_amos22(root: str, max_ct_id: int = 500) -> list[dict]:
    """AMOS 2022: ``imagesTr|imagesVa/amos_NNNN.nii.gz`` with labels in ``labelsTr|labelsVa``.

    Only CT cases are kept: ids below ``max_ct_id`` (AMOS numbers its MRI cases from 500).
    """
    layout = "imagesTr|labelsTr|imagesVa|labelsVa/amos_NNNN.nii.gz"
    root = _require_root(root, layout)
    items = []
    for img_dir, lab_dir, subset in (
        ("imagesTr", "labelsTr", "training"),
        ("imagesVa", "labelsVa", "validation"),
    ):
        idir = storage.join(root, img_dir)
        if not storage.isdir(idir):
            continue
        for n in storage.ls(idir):
            m = re.fullmatch(r"amos_(\d+)\.nii(\.gz)?", n)
            if not m or int(m.group(1)) >= max_ct_id:
                continue
            items.append(
                {
                    "case": f"amos_{m.group(1)}",
                    "image": storage.join(idir, n),
                    "label": storage.join(root, lab_dir, n),
                    "subset": subset,
                }
            )
    if not items:
        raise _no_cases(root, layout + f" (CT cases, ids < {max_ct_id})")
    return items


def scan_kits23(root: str) -> list[dict]:
    """KiTS23: ``dataset/case_NNNNN/{imaging,segmentation}.nii.gz`` (``root`` may also be the
    ``dataset`` folder itself)."""
    layout = "dataset/case_NNNNN/{imaging,segmentation}.nii.gz"
    root = _require_root(root, layout)
    base = storage.join(root, "dataset")
    if not storage.isdir(base):
        base = root
    items = [
        {
            "case": n,
            "image": storage.join(base, n, "imaging.nii.gz"),
            "label": storage.join(base, n, "segmentation.nii.gz"),
        }
        for n in storage.ls(base)
        if re.fullmatch(r"case_\d+", n)
    ]
    if not items:
        raise _no_cases(root, layout)
    return items


BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


def scan_brats21(root: str) -> list[dict]:
    """BraTS 2021: ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``.

    ``image`` is the list of the four modality files in the order t1, t1ce, t2, flair.
    Case folders may sit directly under ``root`` or one folder deeper (e.g. the archive's
    ``BraTS2021_Training_Data/``).
    """
    layout = "BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz"
    root = _require_root(root, layout)
    pattern = re.compile(r"BraTS2021_\d+")
    bases = [root]
    if not any(pattern.fullmatch(n) for n in storage.ls(root)):
        bases = [
            storage.join(root, n) for n in storage.ls(root) if storage.isdir(storage.join(root, n))
        ]
    items = []
    for base in bases:
        for n in storage.ls(base):
            if not pattern.fullmatch(n):
                continue
            cdir = storage.join(base, n)
            items.append(
                {
                    "case": n,
                    "image": [storage.join(cdir, f"{n}_{m}.nii.gz") for m in BRATS_MODALITIES],
                    "label": storage.join(cdir, f"{n}_seg.nii.gz"),
                }
            )
    if not items:
        raise _no_cases(root, layout)
    return items


def scan_decathlon(root: str) -> list[dict]:
    """Decathlon-style folder (as written by ``calibseg data synth``): ``dataset.json`` whose
    ``training`` entries give ``image``, ``label`` and optional ``raters`` relative to ``root``.
    Without dataset.json, ``imagesTr/*.nii.gz`` are paired with ``labelsTr/`` files of the same
    name and ``labelsTr/<case>_raterK.nii.gz`` files."""
    layout = "dataset.json + imagesTr/ + labelsTr/ (Decathlon style)"
    root = _require_root(root, layout)

    def absolute(p: str) -> str:
        p = str(p)
        if storage.is_remote(p) or p.startswith("/"):
            return p
        return storage.join(root, p[2:] if p.startswith("./") else p)

    meta_path = storage.join(root, "dataset.json")
    items = []
    if storage.exists(meta_path):
        meta = storage.read_json(meta_path)
        for entry in meta.get("training", []):
            if "image" not in entry:
                raise ValueError(f"{meta_path}: a training entry has no 'image': {entry}")
            image = entry["image"]
            case = entry.get("case") or _NII.sub(
                "", str(image if isinstance(image, str) else image[0]).split("/")[-1]
            )
            item = {
                "case": case,
                "image": [absolute(p) for p in image]
                if isinstance(image, list)
                else absolute(image),
                "label": absolute(entry["label"]) if entry.get("label") else None,
            }
            if entry.get("raters"):
                item["raters"] = [absolute(p) for p in entry["raters"]]
            items.append(item)
    else:
        idir, ldir = storage.join(root, "imagesTr"), storage.join(root, "labelsTr")
        labels = set(storage.ls(ldir)) if storage.isdir(ldir) else set()
        for n in storage.ls(idir) if storage.isdir(idir) else []:
            if not _NII.search(n):
                continue
            case = _NII.sub("", n)
            raters = sorted(
                (x for x in labels if re.fullmatch(rf"{re.escape(case)}_rater\d+\.nii(\.gz)?", x)),
                key=lambda x: int(re.search(r"_rater(\d+)", x).group(1)),
            )
            item = {"case": case, "image": storage.join(idir, n), "label": storage.join(ldir, n)}
            if raters:
                item["raters"] = [storage.join(ldir, r) for r in raters]
            items.append(item)
    if not items:
        raise _no_cases(root, layout)
    return items


MULTIRATER_CLASS_NAMES = ["background", "pancreas", "kidney", "liver"]


def scan_multirater(root: str) -> list[dict]:
    """CURVAS-style multi-rater layout: ``<case>/image.nii.gz`` + ``annotation_1..K.nii.gz``.

    Items: ``{"case", "image", "raters": [annotation_1 … annotation_K paths]}`` with K the
    largest annotation number in the dataset; ``raters[k - 1]`` is always rater k, so a missing
    ``annotation_2`` is listed at its place (and reported by
    :func:`calibseg.data.validate.check_items`) instead of rater 3 moving into its slot.
    Classes are background 0, pancreas 1, kidney 2, liver 3 (:data:`MULTIRATER_CLASS_NAMES`).
    There is no reference label file: build one with ``monai.transforms.VoteEnsembled``
    (majority) or :class:`calibseg.transforms.AverageAnnotationsd` (soft) when needed. A case
    folder without annotations is kept with ``"raters": []`` so validation can report it.
    """
    layout = "<case>/image.nii.gz + annotation_1..K.nii.gz"
    root = _require_root(root, layout)
    found = []
    for case in storage.ls(root):
        cdir = storage.join(root, case)
        if not storage.isdir(cdir):
            continue
        names = storage.ls(cdir)
        image = next((n for n in ("image.nii.gz", "image.nii") if n in names), None)
        ann = {}
        for n in names:
            m = re.fullmatch(r"annotation_(\d+)\.nii(\.gz)?", n)
            if m and int(m.group(1)) >= 1:
                ann[int(m.group(1))] = n
        if image is None and not ann:
            continue
        found.append((case, cdir, image, ann))
    if not found:
        raise _no_cases(root, layout)
    k = max((max(ann) for *_, ann in found if ann), default=0)
    return [
        {
            "case": case,
            "image": storage.join(cdir, image or "image.nii.gz"),
            "raters": [
                storage.join(cdir, ann.get(r, f"annotation_{r}.nii.gz")) for r in range(1, k + 1)
            ]
            if ann
            else [],
        }
        for case, cdir, image, ann in found
    ]
