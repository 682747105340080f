"""Fan-out over cases with Dask ``distributed``, and DDP helpers (:mod:`calibseg.distributed.ddp`).

Three modes, chosen by the arguments of :func:`get_client` / :func:`map_cases`:

- ``scheduler="tcp://HOST:PORT"``: use that running cluster;
- ``workers=N``: a ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``
  started for the call and closed afterwards, its workers set up for long torch tasks
  (:data:`LOCAL_WORKER_CONFIG`; each given :data:`WORKER_EXIT_SECONDS` to exit);
- neither: in-process, no cluster (a plain loop).

Functions and their arguments must be picklable (module-level functions,
``functools.partial`` of them) when a cluster is used. Results come back in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["get_client", "map_cases", "submit_training", "run_training_jobs", "resolve_mode"]

log = logging.getLogger(__name__)

# seconds each local worker gets to exit by itself when the cluster closes (:func:`get_client`)
WORKER_EXIT_SECONDS = 30.0

# Local workers run long torch tasks (training, inference), not many small array tasks:
# - no MALLOC_TRIM_THRESHOLD_: setting it (Dask sets 64 KiB) switches off glibc's adaptive mmap
#   threshold, so every large tensor is a fresh mmap whose pages fault in again (the demo on a
#   2-core EPYC: 408 s of its 1414 s CPU time in the kernel, epochs 13-14 s instead of 8 s);
# - no statistical profiler: it samples the task's stack every 10 ms and contends for the GIL.
# A variable set in the caller's environment still reaches the workers.
LOCAL_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


def resolve_mode(scheduler: str | None = None, workers: int | None = None) -> str:
    """``"scheduler"``, ``"local"`` or ``"inprocess"`` for the given options (validated)."""
    if scheduler is not None and workers is not None:
        raise ValueError("give either a scheduler address or a number of workers, not both.")
    if scheduler is not None:
        if not isinstance(scheduler, str) or "://" not in scheduler:
            raise ValueError(
                f"scheduler must be an address like tcp://host:8786, got {scheduler!r}."
            )
        return "scheduler"
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}.")
        return "local"
    return "inprocess"


@contextmanager
def get_client(
    scheduler: str | None = None,
    workers: int | None = None,
    resources: dict[str, float] | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the chosen mode, or ``None`` for in-process execution.

    ``resources`` (e.g. ``{"GPU": 1}``) are declared on each LocalCluster worker; workers of an
    external cluster declare theirs at start (``dask worker --resources GPU=1``).
    """
    mode = resolve_mode(scheduler, workers)
    if mode == "inprocess":
        yield None
        return
    from distributed import Client, LocalCluster

    if mode == "scheduler":
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as e:
            raise ConnectionError(
                f"cannot connect to the Dask scheduler at {scheduler}: {e}".splitlines()[0]
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    with dask.config.set(LOCAL_WORKER_CONFIG):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            resources=resources,
            silence_logs=logging.WARNING,
        )
    try:
        with Client(cluster) as client:
            yield client
        # workers that imported torch and MONAI take longer to exit than the 4 s a nanny grants
        # them when the cluster closes (they would be killed, with warnings and a heartbeat
        # traceback): on a normal exit stop them first, giving each this long to exit by itself
        cluster.sync(_close_workers, cluster, WORKER_EXIT_SECONDS)
    finally:
        cluster.close()


async def _close_workers(cluster: Any, timeout: float) -> None:
    """Close a LocalCluster's nannies, each waiting up to ``timeout`` s for its worker's exit."""
    import asyncio

    await asyncio.gather(*(w.close(timeout=timeout) for w in list(cluster.workers.values())))


def _progress_bar(total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        f"[bold]{description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


def map_cases(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    description: str = "cases",
    client: Any = None,
) -> list[Any]:
    """``[fn(item) for item in items]``, fanned out over a Dask cluster when asked.

    Args:
        fn: picklable function of one item (use ``functools.partial`` for fixed arguments).
        items: per-case inputs (small: paths/ids, not arrays).
        scheduler / workers: see the module doc; default in-process.
        progress: show a rich progress bar (cases done / total).
        client: an existing ``distributed.Client`` to use instead of creating one.

    Returns:
        results in the order of ``items``. The first failing case's exception is re-raised
        (its type and message preserved), after the other tasks are cancelled.
    """
    items = list(items)
    if client is None and resolve_mode(scheduler, workers) == "inprocess":
        return _run_inprocess(fn, items, progress, description)
    if client is not None:
        return _run_on(client, fn, items, progress, description)
    with get_client(scheduler, workers) as c:
        return _run_on(c, fn, items, progress, description)


def _run_inprocess(fn, items, progress, description) -> list[Any]:
    if not progress or not items:
        return [fn(it) for it in items]
    out = []
    with _progress_bar(len(items), description) as bar:
        task = bar.add_task(description, total=len(items))
        for it in items:
            out.append(fn(it))
            bar.advance(task)
    return out


def _run_on(client, fn, items, progress, description, **submit_kw) -> list[Any]:
    from distributed import as_completed

    if not items:
        return []
    futures = [client.submit(fn, it, pure=False, **submit_kw) for it in items]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(items)
    bar = _progress_bar(len(items), description) if progress else None
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task(description, total=len(items))
        for fut in as_completed(futures):
            if fut.status == "error":
                exc = fut.exception()
                client.cancel(futures)
                raise exc
            results[index[fut.key]] = fut.result()
            fut.release()
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return results


def _call(job: tuple[Callable[..., Any], dict[str, Any]]) -> Any:
    fn, kwargs = job
    return fn(**kwargs)


def submit_training(
    jobs: Sequence[tuple[Callable[..., Any], dict[str, Any]]],
    scheduler: str | None = None,
    workers: int | None = None,
    resources: dict[str, float] | None = None,
    progress: bool = True,
) -> list[Any]:
    """Run training jobs (e.g. ensemble members) as Dask tasks; results in job order.

    Each job is ``(callable, kwargs)``, e.g. ``(calibseg.bundles.runner.train, {"bundle": …,
    "seed": 1})``; each task asks for ``resources`` (default ``{"GPU": 1}``) so a worker runs
    one member per GPU it declares. With ``workers=N`` a LocalCluster of N single-thread worker
    processes, each declaring those resources, is used; with neither ``scheduler`` nor
    ``workers`` the jobs run one after another in-process.
    """
    if isinstance(jobs, str):
        raise TypeError(
            "submit_training takes (callable, kwargs) jobs, e.g. "
            "[(calibseg.bundles.runner.train, {'bundle': path})], not a bundle path."
        )
    jobs = [(fn, dict(kw)) for fn, kw in jobs]
    for fn, _ in jobs:
        if not callable(fn):
            raise TypeError(f"each job must be (callable, kwargs), got {fn!r}.")
    resources = {"GPU": 1} if resources is None else dict(resources)
    mode = resolve_mode(scheduler, workers)
    if mode == "inprocess":
        return _run_inprocess(_call, jobs, progress, "training")
    with get_client(scheduler, workers, resources=resources if mode == "local" else None) as c:
        return _run_on(c, _call, jobs, progress, "training", resources=resources or None)


def run_training_jobs(
    jobs: Sequence[tuple[str, Callable[..., Any], dict[str, Any]]],
    scheduler: str | None = None,
    workers: int | None = None,
    resources: dict[str, float] | None = None,
    on_done: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Run named training jobs ``(name, callable, kwargs)``; returns ``{name: str(result)}`` in
    job order.

    Without ``scheduler``/``workers`` the jobs run one after another in this process and
    ``on_done(name, result)`` follows each; otherwise they are Dask tasks
    (:func:`submit_training`, each asking for ``resources``, default none) and ``on_done``
    follows each once all are done. Raises ValueError for duplicate names.
    """
    names = [name for name, _, _ in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be distinct, got {names}.")
    runs: dict[str, str] = {}
    if resolve_mode(scheduler, workers) == "inprocess":
        for name, fn, kwargs in jobs:
            runs[name] = str(fn(**kwargs))
            if on_done:
                on_done(name, runs[name])
        return runs
    results = submit_training(
        [(fn, kwargs) for _, fn, kwargs in jobs],
        scheduler=scheduler,
        workers=workers,
        resources=dict(resources or {}),
    )
    for name, result in zip(names, results, strict=True):
        runs[name] = str(result)
        if on_done:
            on_done(name, runs[name])
    return runs
