"""Experiment bundles: MONAI bundle folders generated from templates, named by content hash.

A bundle is ``<out>/<data>_<loss>_<hash8>/`` with ``configs/{common,train,validation,
inference_pred,inference_eval,debug,loss,data}.yaml``, ``metadata.json``, ``logging.conf``,
``splits.json``, ``data_root.json`` (and ``.complete``, written last). ``hash8`` is the first 8
hex digits of SHA-256 over the rendered files (fixed order, relative path and bytes), so any
config change gives a new name and the same configs give the same name. An existing bundle
folder is never overwritten.

The configs define MONAI bundle workflows (``training``, ``evaluating``, ``inference``), so
``python -m monai.bundle run training --bundle_root B --meta_file B/metadata.json
--config_file "[B/configs/common.yaml, …]"`` trains a bundle; :func:`config_files` lists the
files in merge order.

Bundles are portable: the data root is not in the hashed configs. ``data_root.json`` records
the root the bundle was created with (``splits.json`` holds item paths under it); at run time
:func:`resolve_data_root` takes ``--data-root``, else ``$CALIBSEG_DATA_<NAME>``, else that
record, and :func:`read_splits` moves the items under the resolved root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import resources
from typing import Any

from calibseg import storage
from calibseg.data import get_dataset, make_splits

__all__ = [
    "LOSSES",
    "CONFIG_FILES",
    "BUNDLE_FILES",
    "create_bundle",
    "list_bundles",
    "load_bundle",
    "bundle_hash",
    "bundle_name",
    "render_bundle",
    "require_bundle",
    "splits_at_run_time",
    "bundle_status",
    "COMPLETE_MARKER",
    "read_splits",
    "resolve_data_root",
    "config_files",
    "DATA_ROOT_FILE",
]

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = tuple(
    f"{kind}_{base}"
    for kind in ("baseline", "hardl1ace", "softl1ace")
    for base in ("ce", "dice", "dice_ce")
) + tuple(f"{kind}_dice_ce_paper" for kind in ("baseline", "hardl1ace", "softl1ace"))

# merge order for ConfigParser (later files override earlier keys); debug.yaml only with --debug
CONFIG_FILES: tuple[str, ...] = (
    "common",
    "data",
    "loss",
    "train",
    "validation",
    "inference_pred",
    "inference_eval",
    "debug",
)
# the files that define a bundle, in the fixed order used for its hash
BUNDLE_FILES: tuple[str, ...] = (
    *(f"configs/{c}.yaml" for c in CONFIG_FILES),
    "metadata.json",
    "logging.conf",
)

# per-dataset sizes: patch (roi) size, network width, epochs, validation interval
_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "acdc17": {"roi_size": [192, 192, 16], "init_filters": 32, "max_epochs": 300},
    "amos22": {"roi_size": [128, 128, 128], "init_filters": 32, "max_epochs": 300},
    "brats21": {"roi_size": [128, 128, 128], "init_filters": 32, "max_epochs": 300},
    "kits23": {"roi_size": [128, 128, 128], "init_filters": 32, "max_epochs": 300},
    "synthetic": {"roi_size": [32, 32, 32], "init_filters": 8, "max_epochs": 40},
}
_REGION_DATASETS = ("kits23", "brats21")


def _template(rel: str) -> bytes:
    return resources.files("calibseg.bundles").joinpath("templates", rel).read_bytes()


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}.")


def _set_key(cfg: dict, key: str, value: Any) -> None:
    parts = key.replace("::", "#").split("#")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {p!r} is not a mapping.")
    node[parts[-1]] = value


def render_bundle(
    data: str,
    loss: str,
    data_root: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """Render the bundle files for ``data`` and ``loss``: ``{relative path: bytes}``.

    ``overrides`` maps ``"<config>#<key>[#<subkey>...]"`` to a value, e.g.
    ``{"train#max_epochs": 5, "loss#ace_weight": 0.5}`` (``<config>`` is one of CONFIG_FILES).
    Raises ValueError for an unknown dataset, loss or config name. ``data_root`` does not
    change the files (bundles are portable); it is accepted for the signature's sake.
    """
    import yaml

    _check_loss(loss)
    spec = get_dataset(data)
    d = {**_DATASET_DEFAULTS.get(data, _DATASET_DEFAULTS["synthetic"])}
    values = {
        "dataset": data,
        "loss": loss,
        "num_classes": len(spec.class_names),
        "in_channels": int(spec.in_channels),
        "roi_size": json.dumps(list(d["roi_size"])),
        "init_filters": d["init_filters"],
        "max_epochs": d["max_epochs"],
        "val_interval": 1 if data == "synthetic" else 5,
        "regions": "true" if data in _REGION_DATASETS else "false",
        "class_names": json.dumps(list(spec.class_names)),
        "channel_def": json.dumps({str(i): n for i, n in enumerate(spec.class_names)}),
    }

    def fill(text: str) -> str:
        for k, v in values.items():
            text = text.replace("{{" + k + "}}", str(v))
        return text

    files: dict[str, bytes] = {}
    for rel in BUNDLE_FILES:
        src = f"losses/{loss}.yaml" if rel == "configs/loss.yaml" else rel
        files[rel] = fill(_template(src).decode("utf-8")).encode("utf-8")

    by_file: dict[str, list[tuple[str, Any]]] = {}
    for key, value in (overrides or {}).items():
        name, _, rest = key.replace("::", "#").partition("#")
        if name not in CONFIG_FILES or not rest:
            raise ValueError(
                f"override {key!r} must look like '<config>#<key>' with <config> one of "
                f"{', '.join(CONFIG_FILES)}."
            )
        by_file.setdefault(name, []).append((rest, value))
    for name, items in by_file.items():
        rel = f"configs/{name}.yaml"
        cfg = yaml.safe_load(files[rel]) or {}
        for k, v in items:
            _set_key(cfg, k, v)
        files[rel] = yaml.safe_dump(cfg, sort_keys=False).encode("utf-8")
    return files


def _hash_files(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in BUNDLE_FILES:
        h.update(rel.encode() + b"\0" + files[rel] + b"\0")
    return h.hexdigest()


def bundle_name(
    data: str, loss: str, data_root: str | None = None, overrides: dict[str, Any] | None = None
) -> str:
    """The folder name ``<data>_<loss>_<hash8>`` that :func:`create_bundle` would use (the
    same for every ``data_root``)."""
    return f"{data}_{loss}_{_hash_files(render_bundle(data, loss, data_root, overrides))[:8]}"


def bundle_hash(bundle: str) -> str:
    """Full SHA-256 hex digest of a bundle's defining files (its name carries the first 8)."""
    files = {}
    for rel in BUNDLE_FILES:
        p = storage.join(bundle, rel)
        if not storage.exists(p):
            raise FileNotFoundError(f"{bundle} is not a complete bundle: {rel} is missing.")
        files[rel] = storage.read_bytes(p)
    return _hash_files(files)


COMPLETE_MARKER = ".complete"
"""Written last by :func:`create_bundle` (JSON: bundle hash and files): the bundle is whole."""

_REQUIRED = (*BUNDLE_FILES, "splits.json")


def _missing_files(bundle: str) -> list[str] | None:
    """Required bundle files absent under ``bundle`` (two listings); None if nothing is there."""
    try:
        top = set(storage.ls(bundle))
    except FileNotFoundError:
        return None
    try:
        configs = set(storage.ls(storage.join(bundle, "configs"))) if "configs" in top else set()
    except FileNotFoundError:
        configs = set()
    have = top | {f"configs/{n}" for n in configs}
    return [rel for rel in _REQUIRED if rel not in have]


def bundle_status(bundle: str) -> str:
    """``"absent"`` (nothing there), ``"complete"`` (completion marker written, or every
    file present) or ``"incomplete"`` (an interrupted creation: some files are missing)."""
    missing = _missing_files(str(bundle))
    if missing is None:
        return "absent"
    if missing:
        return "incomplete"
    return "complete"


def require_bundle(bundle: str) -> str:
    """Return ``bundle`` if it is a complete bundle folder.

    Raises FileNotFoundError (one line) when there is no bundle, or when files are missing
    (an interrupted ``bundle create``: rerunning it repairs the bundle).
    """
    missing = _missing_files(str(bundle))
    if missing is None or "configs/data.yaml" in missing and len(missing) == len(_REQUIRED):
        raise FileNotFoundError(
            f"no bundle at {bundle}; create one with `calibseg bundle create --data D --loss L`."
        )
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"bundle {storage.redact(str(bundle))} is incomplete ({missing[0]}{more} missing; "
            "an interrupted `bundle create`?): rerun the same `calibseg bundle create` to "
            "repair it."
        )
    return str(bundle)


DATA_ROOT_FILE = "data_root.json"
"""Not hashed: ``{"splits_root": root splits.json was computed under, "data_root": default}``."""


def _root_record(bundle: str) -> dict[str, str]:
    p = storage.join(bundle, DATA_ROOT_FILE)
    if storage.exists(p):
        return storage.read_json(p)
    import yaml  # a bundle of an earlier calibseg: the root is in data.yaml

    root = yaml.safe_load(storage.read_text(storage.join(bundle, "configs", "data.yaml")))
    root = root.get("data_root") if isinstance(root, dict) else None
    if not isinstance(root, str) or root.startswith("$"):
        raise FileNotFoundError(f"bundle {storage.redact(bundle)} has no {DATA_ROOT_FILE}.")
    return {"splits_root": root, "data_root": root}


def _normal_root(root: str) -> str:
    root = os.path.expanduser(str(root))
    return root.rstrip("/") if storage.is_remote(root) else os.path.abspath(root)


def resolve_data_root(bundle: str, data_root: str | None = None) -> str:
    """The data root of ``bundle`` for this run: ``data_root`` if given, else
    ``$CALIBSEG_DATA_<NAME>`` of the bundle's dataset, else the recorded default
    (``data_root.json``). Raises FileNotFoundError when the bundle is missing."""
    if data_root:
        return _normal_root(data_root)
    import yaml

    bundle = str(bundle)
    cfg = yaml.safe_load(storage.read_text(storage.join(bundle, "configs", "data.yaml"))) or {}
    env = (
        os.environ.get(get_dataset(cfg.get("dataset", "")).env_var) if cfg.get("dataset") else None
    )
    if env:
        return _normal_root(env)
    return _root_record(bundle)["data_root"]


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, str):
        sep = "/" if storage.is_remote(old) else os.sep
        if value == old or value.startswith(old.rstrip(sep) + sep):
            rel = value[len(old.rstrip(sep)) + 1 :]
            return storage.join(new, *rel.split(sep)) if rel else new
    return value


def read_splits(bundle: str, data_root: str | None = None) -> dict[str, list[dict]]:
    """The bundle's ``splits.json``: {"training", "validation", "test": [data items]}.

    With ``data_root`` (e.g. from :func:`resolve_data_root`) other than the root the splits
    were computed under, the items' paths under that root are moved under ``data_root``."""
    splits = storage.read_json(storage.join(require_bundle(bundle), "splits.json"))
    if data_root is None:
        return splits
    old, new = _root_record(str(bundle))["splits_root"], _normal_root(data_root)
    if old == new:
        return splits
    return {
        k: [{f: _rebase(v, old, new) for f, v in it.items()} for it in items]
        for k, items in splits.items()
    }


def splits_at_run_time(bundle: str, data_root: str | None = None) -> dict[str, list[dict]]:
    """:func:`read_splits` with the items under the data root of this run
    (:func:`resolve_data_root`). A bundle with no recorded root (of an earlier calibseg, or
    assembled by hand) and no ``data_root`` given: the paths as written in ``splits.json``.

    Raises:
        FileNotFoundError: ``data_root`` given for a bundle that records no root to move from.
    """
    try:
        return read_splits(bundle, resolve_data_root(bundle, data_root))
    except FileNotFoundError:
        if data_root:
            raise
        return storage.read_json(storage.join(str(bundle), "splits.json"))


def config_files(bundle: str, debug: bool = False) -> list[str]:
    """The bundle's config files in merge order (``debug.yaml`` only with ``debug``)."""
    return [
        storage.join(str(bundle), "configs", f"{c}.yaml")
        for c in CONFIG_FILES
        if debug or c != "debug"
    ]


def _compute_splits(data: str, root: str, split_seed: int, fractions) -> bytes:
    spec = get_dataset(data)
    items = spec.scan(root)
    if not items:
        raise FileNotFoundError(f"no {data} cases found under {root}.")
    problems = spec.validate(items)
    if problems:
        raise ValueError(f"{data} data under {root} has problems: {problems[0]}")
    splits = make_splits(items, split_seed=split_seed, fractions=tuple(fractions))
    return (json.dumps(splits, indent=2) + "\n").encode("utf-8")


def _marker(files: dict[str, bytes]) -> bytes:
    body = {"bundle_hash": _hash_files(files), "files": sorted(files)}
    return (json.dumps(body, indent=2) + "\n").encode("utf-8")


def _repair(path: str, files: dict[str, bytes], splits: Any, root_record: Any) -> None:
    """Complete an interrupted bundle at ``path``: upload the missing files, keep the present
    ones (refusing any whose bytes differ from the rendered configs), write the marker last."""
    for rel, content in files.items():
        p = storage.join(path, rel)
        if not storage.exists(p):
            storage.write_bytes(p, content)
        elif storage.read_bytes(p) != content:
            raise FileExistsError(
                f"bundle {storage.redact(path)} is incomplete and its {rel} differs from the "
                "configs that named it; move it away and rerun `calibseg bundle create`."
            )
    sp = storage.join(path, "splits.json")
    if not storage.exists(sp):
        storage.write_bytes(sp, splits())
    rp = storage.join(path, DATA_ROOT_FILE)
    if not storage.exists(rp):
        storage.write_bytes(rp, root_record())
    storage.write_bytes(storage.join(path, COMPLETE_MARKER), _marker(files))


def create_bundle(
    data: str,
    loss: str,
    out: str = "bundles",
    data_root: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Create (or find) the bundle ``<out>/<data>_<loss>_<hash8>`` and return its path.

    The same inputs always give the same folder; an existing complete folder is reused, never
    overwritten. ``splits.json`` is computed once, with the split seed of ``data.yaml``.
    A bundle is complete or absent: a local one is written in a temporary folder and renamed;
    a remote one (``s3://``) is uploaded file by file with the completion marker
    (``.complete``) last. An incomplete bundle left by an interrupted creation is repaired
    (missing files uploaded; a present file that differs is refused with FileExistsError).
    """
    import yaml

    files = render_bundle(data, loss, overrides=overrides)
    name = f"{data}_{loss}_{_hash_files(files)[:8]}"
    path = storage.join(str(out), name)
    data_cfg = yaml.safe_load(files["configs/data.yaml"])
    cached: dict[str, Any] = {}

    def root() -> str:
        if "root" not in cached:
            cached["root"] = _normal_root(get_dataset(data).resolve_root(data_root))
        return cached["root"]

    def splits() -> bytes:  # scanned once, before anything of a new bundle is written
        if "s" not in cached:
            cached["s"] = _compute_splits(
                data,
                root(),
                int(data_cfg.get("split_seed", 0)),
                data_cfg.get("split_fractions", (0.6, 0.2, 0.2)),
            )
        return cached["s"]

    def record(splits_root: str) -> bytes:
        body = {"splits_root": splits_root, "data_root": root()}
        return (json.dumps(body, indent=2) + "\n").encode("utf-8")

    status = bundle_status(path)
    if status == "complete":
        logger.info("bundle %s exists; reusing it", path)
        if data_root:  # the data moved: the bundle's default root follows it
            old = _root_record(path)
            if old["data_root"] != root():
                storage.write_bytes(storage.join(path, DATA_ROOT_FILE), record(old["splits_root"]))
        return path
    if status == "incomplete":
        logger.warning("bundle %s is incomplete; repairing it", storage.redact(path))
        _repair(path, files, splits, lambda: record(root()))
        return path
    content = {
        **files,
        "splits.json": splits(),
        DATA_ROOT_FILE: record(root()),
        COMPLETE_MARKER: _marker(files),
    }
    if storage.is_remote(path):
        for rel, data_bytes in content.items():
            if rel != COMPLETE_MARKER:
                storage.write_bytes(storage.join(path, rel), data_bytes)
        storage.write_bytes(storage.join(path, COMPLETE_MARKER), content[COMPLETE_MARKER])
        return path
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=out)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    try:
        for rel, data_bytes in content.items():
            os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data_bytes)
        try:
            os.rename(tmp, path)  # atomic; fails if another process created it meanwhile
        except OSError:
            if not os.path.isdir(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_bundle(bundle: str, debug: bool = False, overrides: dict[str, Any] | None = None) -> Any:
    """A ``monai.bundle.ConfigParser`` holding the bundle's merged configs.

    Files are merged in CONFIG_FILES order (``debug.yaml`` only when ``debug``); ``overrides``
    maps config ids (``"max_epochs"``, ``"network_def#init_filters"``) to values.
    """
    from monai.bundle import ConfigParser

    require_bundle(bundle)
    names = [c for c in CONFIG_FILES if debug or c != "debug"]
    parser = ConfigParser()
    with tempfile.TemporaryDirectory(prefix="calibseg-cfg-") as tmp:
        paths = []
        for c in names:
            p = os.path.join(tmp, f"{c}.yaml")
            with open(p, "wb") as f:
                f.write(storage.read_bytes(storage.join(bundle, "configs", f"{c}.yaml")))
            paths.append(p)
        parser.read_config(paths)
    parser["bundle_root"] = str(bundle)
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser


def _best_dice(run_dir: str) -> float | None:
    for rel in ("training_summary.json", "evaluation/summary.json"):
        p = storage.join(run_dir, rel)
        if not storage.exists(p):
            continue
        try:
            s = storage.read_json(p)
        except ValueError:
            continue
        v = s.get("best_dice") if rel == "training_summary.json" else s.get("mean_dice")
        if isinstance(v, (int, float)):
            return float(v)
    return None


def list_bundles(root: str = "bundles") -> list[dict]:
    """Bundles under ``root``: [{"name", "path", "data", "loss", "runs", "best_dice"}].

    ``runs`` lists run folders (those with checkpoints); ``best_dice`` is the best validation
    Dice over them (None when no run has validated yet). Missing root → FileNotFoundError.
    """
    import yaml

    if not storage.exists(str(root)):
        raise FileNotFoundError(f"no bundle folder {root}.")
    out = []
    for name in storage.ls(str(root)):
        path = storage.join(str(root), name)
        cfg_path = storage.join(path, "configs", "data.yaml")
        if name.startswith(".") or not storage.exists(cfg_path):
            continue
        data_cfg = yaml.safe_load(storage.read_text(cfg_path)) or {}
        loss_cfg = yaml.safe_load(storage.read_text(storage.join(path, "configs", "loss.yaml")))
        runs, dices = [], []
        for run in storage.ls(path):
            if storage.exists(storage.join(path, run, "checkpoints")):
                runs.append(run)
                d = _best_dice(storage.join(path, run))
                if d is not None:
                    dices.append(d)
        out.append(
            {
                "name": name,
                "path": path,
                "data": data_cfg.get("dataset"),
                "loss": (loss_cfg or {}).get("loss_name"),
                "runs": runs,
                "best_dice": max(dices) if dices else None,
            }
        )
    return out
