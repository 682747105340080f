"""Bin statistics once per iteration, shared by the calibration handlers.

:class:`BinningDataHandler` bins ``(y_pred, y)`` of each iteration with
:func:`calibseg.binning.compute_bin_stats` and puts the results into ``engine.state.output``;
the other calibseg handlers find them there and do not bin again — when their own
``output_transform`` selects the very same tensors and their ``num_bins`` and ``right`` match;
otherwise they bin their own inputs, so a consumer's options are never silently ignored.
Attach it *before* them (Ignite runs handlers of one event in the order they were attached).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers.utils import from_engine

from calibseg.binning import BinStats, check_num_bins, compute_bin_stats
from calibseg.metrics.reliability import binning_tensor, stats_from_binning_tensor

__all__ = ["BinningDataHandler", "ITERATION_KEY", "RUNNING_KEY", "AGGREGATED_KEY"]

ITERATION_KEY = "iteration_binning"
RUNNING_KEY = "running_binning_data"
AGGREGATED_KEY = "aggregated_binning_data"
# (num_bins, right, identity of the binned inputs): lets consumers reuse the binning only when
# their own options and output_transform give the very same inputs
SOURCE_KEY = "binned_from"


def default_transform() -> Callable[[Any], tuple[Any, Any]]:
    """``(pred, label)`` from a dict output or a list of per-case dicts (MONAI engines)."""
    return from_engine(["pred", "label"])


def bin_output(
    y_pred: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor | Sequence[torch.Tensor],
    num_bins: int,
    right: bool,
) -> BinStats:
    """BinStats ``[B, C, K]`` of a batch tensor or a list of channel-first cases."""
    if isinstance(y_pred, torch.Tensor) and isinstance(y, torch.Tensor):
        return compute_bin_stats(y_pred, y, num_bins=num_bins, right=right)
    if isinstance(y_pred, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(y_pred) != len(y) or not y_pred:
            raise ValueError(
                f"pred and label lists must be non-empty and of one length, got "
                f"{len(y_pred)} and {len(y)}."
            )
        return BinStats.cat(
            [
                compute_bin_stats(
                    torch.as_tensor(p)[None], torch.as_tensor(t)[None], num_bins, right
                )
                for p, t in zip(y_pred, y, strict=True)
            ]
        )
    raise TypeError(
        "output_transform must return (y_pred, y) as batch tensors or lists of channel-first "
        f"tensors, got {type(y_pred).__name__} and {type(y).__name__}."
    )


def _outputs(output: Any) -> list[dict]:
    if isinstance(output, dict):
        return [output]
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, dict) for o in output):
        return list(output)
    return []


def _fingerprint(x: Any) -> tuple:
    """Identity of the data of a tensor or a list of tensors (storage, layout, in-place version)."""
    if isinstance(x, torch.Tensor):
        return (
            x.data_ptr(),
            tuple(x.shape),
            x.stride(),
            x.dtype,
            str(x.device),
            x._version,
        )
    if isinstance(x, (list, tuple)):
        return tuple(_fingerprint(v) for v in x)
    return (id(x),)


def binning_source(
    y_pred: Any, y: Any, num_bins: int, right: bool, include_background: bool = True
) -> tuple:
    """What a binning was computed from: the options and the identity of the inputs."""
    return (num_bins, bool(right), bool(include_background), _fingerprint(y_pred), _fingerprint(y))


def read_iteration_binning(
    output: Any, num_bins: int, right: bool, y_pred: Any, y: Any, include_background: bool = True
) -> BinStats | None:
    """BinStats ``[B, C, K]`` put into ``engine.state.output`` by :class:`BinningDataHandler`,
    with the consumer's channels (channel 0 dropped unless ``include_background``), or None if
    absent, not computed from these very inputs ``(y_pred, y)`` — the consumer's own
    ``output_transform`` result — with these ``num_bins`` and ``right``, or without the
    background the consumer wants; the consumer then bins its own inputs, so its options are
    always honoured."""
    outs = _outputs(output)
    if not outs or any(ITERATION_KEY not in o or SOURCE_KEY not in o for o in outs):
        return None
    source = outs[0][SOURCE_KEY]
    want = binning_source(y_pred, y, num_bins, right)
    if source[:2] != want[:2] or source[3:] != want[3:]:
        return None
    stored_background = source[2]
    if include_background and not stored_background:
        return None
    t = outs[0][ITERATION_KEY] if len(outs) == 1 else torch.cat([o[ITERATION_KEY] for o in outs])
    stats = stats_from_binning_tensor(t)
    if stored_background and not include_background:
        stats = stats.select_classes(slice(1, None))
    return stats


def case_names_of(engine: Engine, n: int, start: int, transform: Callable | None) -> list[str]:
    """Names of the ``n`` cases of this iteration: ``transform(engine.state)`` if given, else
    ``batch["case"]``, else the file name in the prediction's MONAI metadata, else
    ``case_<index>``."""
    if transform is not None:
        names = transform(engine.state)
        names = [names] if isinstance(names, str) else list(names)
    else:
        names = _names_from_batch(engine.state.batch) or _names_from_meta(engine.state.output)
    if not names or len(names) != n:
        if transform is not None:
            raise ValueError(f"case_name_transform gave {len(names)} names for {n} cases.")
        return [f"case_{i}" for i in range(start, start + n)]
    return [str(x) for x in names]


def _names_from_batch(batch: Any) -> list[str] | None:
    items = _outputs(batch)
    if len(items) == 1 and "case" in items[0]:
        c = items[0]["case"]
        return [c] if isinstance(c, str) else [str(x) for x in c]
    if len(items) > 1 and all("case" in i for i in items):
        return [str(i["case"]) for i in items]
    return None


def _names_from_meta(output: Any) -> list[str] | None:
    names: list[str] = []
    for o in _outputs(output):
        meta = getattr(o.get("pred"), "meta", None) or {}
        f = meta.get("filename_or_obj")
        if f is None:
            return None
        names += [f] if isinstance(f, str) else [str(x) for x in f]
    return [os.path.basename(x).split(".")[0] for x in names] or None


class BinningDataHandler:
    """Bin each iteration once and share the results through ``engine.state.output``.

    Adds to ``engine.state.output`` (a dict, or every dict of a list of per-case dicts):

    - ``iteration_binning``: ``[B, C, 3, K]`` this iteration's (mean_p, mean_gt, counts);
    - ``running_binning_data``: ``[N, C, 3, K]`` every case seen since the epoch started;
    - ``aggregated_binning_data``: ``[C, 3, K]`` the pooled (micro) bins of those cases.

    ``C`` counts the channels kept (channel 0 dropped with ``include_background=False``, as in
    the paper's code); consumers without the background reuse either form, consumers with it
    only the full one. Empty bins have NaN means. For a list output each dict gets its own
    case's ``[1, C, 3, K]`` as ``iteration_binning``. The paper's positional order
    ``(num_bins, include_background, right)`` is kept; ``aggregated_binning_data`` pools voxel
    counts exactly (the paper's code averages the per-case mean probabilities, see
    docs/dropin.md).

    Args:
        num_bins: equal-width bins over [0, 1].
        include_background: keep channel 0.
        right: bin-edge rule (see :func:`calibseg.metrics.calibration_binning`).
        output_transform: ``engine.state.output`` → ``(y_pred, y)``; default
            ``from_engine(["pred", "label"])``.

    Example:
        >>> BinningDataHandler(num_bins=20).attach(evaluator)  # doctest: +SKIP
    """

    def __init__(
        self,
        num_bins: int = 20,
        include_background: bool = True,
        right: bool = False,
        output_transform: Callable[[Any], tuple[Any, Any]] | None = None,
    ) -> None:
        check_num_bins(num_bins)
        self.num_bins = num_bins
        self.include_background = include_background
        self.right = right
        self.output_transform = output_transform or default_transform()
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the cases of the previous epoch."""
        self.iteration_stats: BinStats | None = None
        self._running: torch.Tensor | None = None
        self._total: BinStats | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @property
    def running_stats(self) -> torch.Tensor | None:
        """``[N, C, 3, K]`` binning data of the cases seen this epoch (None before any)."""
        return self._running

    def __call__(self, engine: Engine) -> None:
        outs = _outputs(engine.state.output)
        if not outs:
            raise TypeError(
                "BinningDataHandler needs engine.state.output to be a dict or a list of dicts, "
                f"got {type(engine.state.output).__name__}."
            )
        y_pred, y = self.output_transform(engine.state.output)
        stats = bin_output(y_pred, y, self.num_bins, self.right)
        if not self.include_background:
            if stats.shape[1] < 2:
                raise ValueError("include_background=False needs at least two channels.")
            stats = stats.select_classes(slice(1, None))
        source = binning_source(y_pred, y, self.num_bins, self.right, self.include_background)
        self.iteration_stats = stats
        tot = stats.total()
        self._total = tot if self._total is None else self._total + tot
        it = binning_tensor(stats)
        self._running = it if self._running is None else torch.cat([self._running, it])
        agg = binning_tensor(self._total)[0]
        if len(outs) == 1:
            outs[0][ITERATION_KEY] = it
        elif len(outs) == it.shape[0]:
            for i, o in enumerate(outs):
                o[ITERATION_KEY] = it[i : i + 1]
        else:
            raise ValueError(f"{len(outs)} output dicts for {it.shape[0]} binned cases.")
        for o in outs:
            o[RUNNING_KEY] = self._running
            o[AGGREGATED_KEY] = agg
            o[SOURCE_KEY] = source
