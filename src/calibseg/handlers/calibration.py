"""Ignite handlers for calibration errors.

- :class:`CalibrationError`: one ECE/ACE/MCE value per run or epoch (a MONAI
  ``IgniteMetricHandler`` around :class:`calibseg.metrics.CalibrationErrorMetric`).
- :class:`CalibrationErrorHandler`: macro and micro ECE, ACE and MCE per class, classes missing
  from the ground truth per case, and CSV tables.

Both reuse ``iteration_binning`` from :class:`~calibseg.handlers.BinningDataHandler` when it is
attached first and binned the same ``(y_pred, y)`` (their own ``output_transform``) with the same
``num_bins`` and ``right``, and bin ``(y_pred, y)`` themselves otherwise.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics.metric import reinit__is_reduced
from monai.data import decollate_batch
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.handlers.utils import write_metrics_reports
from monai.metrics.utils import do_metric_reduction
from monai.utils import ImageMetaKey, MetricReduction

from calibseg import storage
from calibseg.binning import BinStats, check_num_bins
from calibseg.handlers.binning import (
    bin_output,
    case_names_of,
    default_transform,
    read_iteration_binning,
)
from calibseg.metrics.calibration import (
    _REDUCTION_KEY,
    ERROR_NAMES,
    CalibrationErrorMetric,
    CalibrationReduction,
)

__all__ = ["CalibrationError", "CalibrationErrorHandler", "CaseStatsCollector"]

logger = logging.getLogger(__name__)


class CalibrationError(IgniteMetricHandler):
    """ECE, ACE or MCE as an Ignite metric (``engine.state.metrics[name]``), logged at the end.

    Args:
        num_bins: equal-width bins over [0, 1].
        include_background: keep channel 0.
        calibration_reduction: ``"expected"`` (ECE), ``"average"`` (ACE), ``"maximum"`` (MCE).
        metric_reduction: reduction of the per-image, per-class table ``[N, C]``:
            ``"mean"`` (default), ``"mean_batch"`` (per class, averaged over images),
            ``"mean_channel"`` (per image, averaged over classes), ``"sum*"``, ``"none"``.
        output_transform: ``engine.state.output`` → ``(y_pred, y)``.
        save_details: store the ``[N, C]`` table in ``engine.state.metric_details[name]``.
        right: bin-edge rule.
        average: ``"image"`` reduces all images together; ``"iteration"`` reduces each
            iteration's images first and averages the iteration values (NaN-aware).

    The first six parameters are the paper's, in its order.

    Example:
        >>> CalibrationError(calibration_reduction="average",
        ...                  output_transform=from_engine(["pred", "label"])
        ...                  ).attach(evaluator, "ACE")  # doctest: +SKIP
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        calibration_reduction: CalibrationReduction | str = CalibrationReduction.EXPECTED,
        metric_reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        right: bool = False,
        average: str = "image",
    ) -> None:
        if average not in ("image", "iteration"):
            raise ValueError(f"average must be 'image' or 'iteration', got {average!r}.")
        if average == "iteration" and MetricReduction(metric_reduction) not in (
            MetricReduction.MEAN,
            MetricReduction.SUM,
            MetricReduction.MEAN_BATCH,
            MetricReduction.SUM_BATCH,
        ):
            raise ValueError(
                "average='iteration' needs a metric_reduction over images "
                f"(mean, sum, mean_batch, sum_batch), got {metric_reduction!r}."
            )
        metric_fn = CalibrationErrorMetric(
            num_bins=num_bins,
            include_background=include_background,
            calibration_reduction=calibration_reduction,
            metric_reduction=metric_reduction,
            right=right,
        )
        self.average = average
        self._sizes: list[int] = []
        super().__init__(
            metric_fn=metric_fn, output_transform=output_transform, save_details=save_details
        )

    @reinit__is_reduced
    def reset(self) -> None:
        super().reset()
        self._sizes = []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add one iteration: reuse ``iteration_binning`` if present, else bin ``output``."""
        if len(output) != 2:
            raise ValueError(f"output must be (y_pred, y), got {len(output)} items.")
        m: CalibrationErrorMetric = self.metric_fn  # type: ignore[assignment]
        stats = None
        if self._engine is not None:
            stats = read_iteration_binning(
                self._engine.state.output,
                m.num_bins,
                m.right,
                output[0],
                output[1],
                m.include_background,
            )
        if stats is None:
            stats = bin_output(output[0], output[1], m.num_bins, m.right)
            if not m.include_background:
                stats = stats.select_classes(slice(1, None))
        errors = stats.errors()[_REDUCTION_KEY[m.calibration_reduction]].float()
        m.extend(errors)
        self._sizes.append(int(errors.shape[0]))

    def compute(self) -> Any:
        if self.average == "image":
            result = super().compute()
        else:
            m: CalibrationErrorMetric = self.metric_fn  # type: ignore[assignment]
            data = m.get_buffer()
            if not isinstance(data, torch.Tensor):
                raise ValueError("CalibrationError has no data: run the engine first.")
            per_it = torch.stack(
                [
                    do_metric_reduction(d.clone(), m.metric_reduction)[0]
                    for d in data.split(self._sizes)
                ]
            )
            result = per_it.nanmean(0)
            self._is_reduced = True
            if self.save_details and self._engine is not None and self._name is not None:
                self._engine.state.metric_details[self._name] = data
            result = result.item() if result.numel() == 1 else result
        logger.info("%s: %s", self._name or "calibration error", result)
        return result


class CaseStatsCollector:
    """Collects per-case BinStats ``[N, C, K]`` and case names over an epoch (base class).

    Reuses ``iteration_binning`` from :class:`~calibseg.handlers.BinningDataHandler` when
    present, bins ``output_transform(engine.state.output)`` otherwise. Subclasses implement
    :meth:`finalize`, called at ``EPOCH_COMPLETED`` (``when="epoch"``) or ``COMPLETED``
    (``when="run"``).
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        right: bool = False,
        class_names: Sequence[str] | None = None,
        when: str = "run",
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
        case_name_transform: Callable[[Any], Sequence[str]] | None = None,
    ) -> None:
        check_num_bins(num_bins)
        if when not in ("epoch", "run"):
            raise ValueError(f"when must be 'epoch' or 'run', got {when!r}.")
        self.num_bins = num_bins
        self.include_background = include_background
        self.right = right
        self.class_names = list(class_names) if class_names is not None else None
        self.when = when
        self.output_transform = output_transform or default_transform()
        self.case_name_transform = case_name_transform
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self._stats: list[BinStats] = []
        self.case_names: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        event = Events.EPOCH_COMPLETED if self.when == "epoch" else Events.COMPLETED
        engine.add_event_handler(event, self._finalize)

    def collect(self, engine: Engine) -> None:
        """Add this iteration's cases."""
        y_pred, y = self.output_transform(engine.state.output)
        stats = read_iteration_binning(
            engine.state.output, self.num_bins, self.right, y_pred, y, self.include_background
        )
        if stats is None:
            stats = bin_output(y_pred, y, self.num_bins, self.right)
            if not self.include_background:
                stats = stats.select_classes(slice(1, None))
        c = stats.shape[1] + (0 if self.include_background else 1)
        if self.class_names is not None and len(self.class_names) != c:
            raise ValueError(f"{len(self.class_names)} class_names given for {c} channels.")
        n = stats.shape[0]
        self.case_names += case_names_of(engine, n, len(self.case_names), self.case_name_transform)
        self._stats.append(BinStats(stats.weight.cpu(), stats.sum_p.cpu(), stats.sum_gt.cpu()))

    @property
    def stats(self) -> BinStats:
        """Per-case statistics of this epoch ``[N, C, K]``."""
        if not self._stats:
            raise ValueError(f"{type(self).__name__} has no data: run the engine first.")
        return BinStats.cat(self._stats)

    @property
    def names_of_classes(self) -> list[str]:
        """Names of the kept classes (default ``class_<i>`` over the input channels)."""
        c = self.stats.shape[1] + (0 if self.include_background else 1)
        names = self.class_names or [f"class_{i}" for i in range(c)]
        return names if self.include_background else names[1:]

    def _finalize(self, engine: Engine) -> None:
        if self._stats:
            self.finalize(engine)

    def finalize(self, engine: Engine) -> None:
        raise NotImplementedError


class CalibrationErrorHandler(CaseStatsCollector):
    """Macro and micro ECE / ACE / MCE per class, with classes missing from the ground truth.

    Per case and class the errors come from that case's bins; *macro* is their mean over
    cases, *micro* the errors of the bins summed over cases. A class is *missing* in a case
    when its ground truth has no positive voxel: its errors are still defined (accuracy 0,
    so they measure the probability put on an absent class) and are flagged in the tables;
    with ``skip_missing_classes=True`` such (case, class) pairs are left out of both macro
    and micro values.

    Results: ``self.results`` = ``{"macro": {m: [C]}, "micro": {m: [C]}, "per_case":
    {m: [N, C]}, "missing": [N, C] bool, "case_names", "class_names"}``;
    ``engine.state.metrics[f"{prefix}_{m}_{macro|micro}"]`` hold class means (floats); with
    ``output_dir``, ``<prefix>_per_case.csv`` (case, class, missing, ece, ace, mce) and
    ``<prefix>_summary.csv`` (class, n_cases, n_missing, ece_macro, ece_micro, …) are
    written (into ``epoch_<n>/`` when ``when="epoch"``), with the reports of the paper's code
    beside them (MONAI's :func:`~monai.handlers.utils.write_metrics_reports`: ``metrics.csv``
    with ``macro_<m>``, ``micro_<m>`` and ``missing_classes``; ``<name>_raw.csv`` per case;
    ``<name>_summary.csv`` with ``summary_ops``). The first seven parameters are the paper's,
    in its order. Micro values pool the voxels of a bin exactly, where the paper's code averages
    the cases' mean probabilities (docs/dropin.md).

    Args:
        num_bins, include_background: binning options.
        output_dir: folder or URL for the CSV files (None: no files; the paper's code
            defaults to ``"./"``).
        summary_ops, delimiter, output_type: the paper's report options, passed to MONAI's
            ``write_metrics_reports`` (``summary_ops``: None, ``"*"`` or a list such as
            ``["mean", "median", "90percentile"]``).
        meta_batch_transform: ``engine.state.batch`` → its metadata; the reports then name
            each case by ``filename_or_obj`` as the paper's code (default: calibseg's case
            names).
        right: bin-edge rule.
        class_names: names of all input channels (background first).
        prefix: metric-name and file-name prefix.
        skip_missing_classes: leave (case, class) pairs without ground truth out of the values.
        when: ``"run"`` (at ``COMPLETED``) or ``"epoch"`` (every ``EPOCH_COMPLETED``).
        output_transform: ``engine.state.output`` → ``(y_pred, y)``.
        case_name_transform: ``engine.state`` → case names of the iteration.
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        output_dir: str | None = None,
        summary_ops: str | Sequence[str] | None = None,
        delimiter: str = ",",
        output_type: str = "csv",
        meta_batch_transform: Callable[[Any], Any] | None = None,
        right: bool = False,
        class_names: Sequence[str] | None = None,
        prefix: str = "calibration",
        skip_missing_classes: bool = False,
        when: str = "run",
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
        case_name_transform: Callable[[Any], Sequence[str]] | None = None,
    ) -> None:
        super().__init__(
            num_bins,
            include_background,
            right,
            class_names,
            when,
            output_transform,
            case_name_transform,
        )
        if str(output_type).lower() != "csv":
            raise ValueError(f"output_type must be 'csv', got {output_type!r}.")
        self.output_dir = output_dir
        self.summary_ops = summary_ops
        self.delimiter = delimiter
        self.output_type = output_type
        self.meta_batch_transform = meta_batch_transform
        self.prefix = prefix
        self.skip_missing_classes = skip_missing_classes
        self.results: dict[str, Any] = {}
        self.written: list[str] = []
        self._filenames: list[str] = []

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self._filenames = []

    def collect(self, engine: Engine) -> None:
        """Add this iteration's cases (and, with ``meta_batch_transform``, their file names)."""
        super().collect(engine)
        if self.meta_batch_transform is not None:
            meta = self.meta_batch_transform(engine.state.batch)
            items = decollate_batch(meta) if isinstance(meta, dict) else list(meta)
            self._filenames += [f"{m.get(ImageMetaKey.FILENAME_OR_OBJ)}" for m in items]

    def finalize(self, engine: Engine) -> None:
        stats = self.stats
        missing = stats.sum_gt.sum(-1) <= 0
        per_case = stats.errors()
        if self.skip_missing_classes:
            keep = (~missing).unsqueeze(-1)
            pooled = BinStats(stats.weight * keep, stats.sum_p * keep, stats.sum_gt * keep).total()
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            shown = {k: torch.where(missing, nan, v) for k, v in per_case.items()}
        else:
            pooled, shown = stats.total(), per_case
        micro = {k: v[0] for k, v in pooled.errors().items()}
        macro = {k: v.nanmean(0) for k, v in shown.items()}
        names = self.names_of_classes
        self.results = {
            "macro": macro,
            "micro": micro,
            "per_case": per_case,
            "missing": missing,
            "case_names": list(self.case_names),
            "class_names": names,
        }
        for k in ERROR_NAMES:
            engine.state.metrics[f"{self.prefix}_{k}_macro"] = _nanmean(macro[k])
            engine.state.metrics[f"{self.prefix}_{k}_micro"] = _nanmean(micro[k])
        n_missing = int(missing.sum())
        logger.info(
            "%s: ECE macro %.4f micro %.4f over %d cases (%d class(es) missing from ground truth)",
            self.prefix,
            _nanmean(macro["ece"]),
            _nanmean(micro["ece"]),
            stats.shape[0],
            n_missing,
        )
        if self.output_dir:
            folder = str(self.output_dir)
            if self.when == "epoch":
                folder = storage.join(folder, f"epoch_{engine.state.epoch}")
            self.written = self.write_csv(folder) + self.write_reports(folder)

    def write_reports(self, folder: str) -> list[str]:
        """The paper's reports through MONAI's ``write_metrics_reports`` (``metrics.csv``,
        ``<name>_raw.csv``, ``<name>_summary.csv``), written atomically into ``folder``."""
        r = self.results
        if not r:
            raise ValueError("no results yet: run the engine first.")
        hide = r["missing"] if self.skip_missing_classes else torch.zeros_like(r["missing"])
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        per_case = {f"macro_{k}": torch.where(hide, nan, v) for k, v in r["per_case"].items()}
        micro = {f"micro_{k}": v[None] for k, v in r["micro"].items()}
        missing = r["missing"].to(torch.int64)
        metrics: dict[str, Any] = {k: float(v.nanmean()) for k, v in (per_case | micro).items()}
        metrics["missing_classes"] = r["missing"].any(0).tolist()
        details = {k: v.numpy() for k, v in (per_case | micro).items()}
        details["missing_classes"] = missing.numpy()
        images = self._filenames or list(r["case_names"])
        if len(images) != missing.shape[0]:
            raise ValueError(f"{len(images)} file names for {missing.shape[0]} cases.")
        written = []
        with tempfile.TemporaryDirectory() as tmp:
            write_metrics_reports(
                tmp,
                images,
                metrics,
                details,
                self.summary_ops,
                deli=self.delimiter,
                output_type=self.output_type,
            )
            for name in sorted(os.listdir(tmp)):
                target = storage.join(folder, name)
                with open(os.path.join(tmp, name), "rb") as f:
                    storage.write_bytes(target, f.read())
                written.append(target)
        return written

    def write_csv(self, folder: str) -> list[str]:
        """Write ``<prefix>_per_case.csv`` and ``<prefix>_summary.csv`` into ``folder``."""
        r = self.results
        if not r:
            raise ValueError("no results yet: run the engine first.")
        pc = {k: v.tolist() for k, v in r["per_case"].items()}
        missing = r["missing"].tolist()
        rows = [
            [case, cls, int(missing[i][j]), *(_fmt(pc[k][i][j]) for k in ERROR_NAMES)]
            for i, case in enumerate(r["case_names"])
            for j, cls in enumerate(r["class_names"])
        ]
        per_case = storage.join(folder, f"{self.prefix}_per_case.csv")
        storage.write_text(per_case, _csv(["case", "class", "missing", *ERROR_NAMES], rows))
        n_cases = len(r["case_names"])
        n_missing = r["missing"].sum(0).tolist()
        summary_rows = [
            [
                cls,
                n_cases,
                n_missing[j],
                *(_fmt(float(r[a][k][j])) for k in ERROR_NAMES for a in ("macro", "micro")),
            ]
            for j, cls in enumerate(r["class_names"])
        ]
        header = ["class", "n_cases", "n_missing"] + [
            f"{k}_{a}" for k in ERROR_NAMES for a in ("macro", "micro")
        ]
        summary = storage.join(folder, f"{self.prefix}_summary.csv")
        storage.write_text(summary, _csv(header, summary_rows))
        return [per_case, summary]


def _nanmean(t: torch.Tensor) -> float:
    v = t[~torch.isnan(t)]
    return float(v.mean()) if v.numel() else math.nan


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6g}"


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
