"""map_cases / submit_training in-process, on a scheduler address, and on a LocalCluster."""

from __future__ import annotations

import operator
import os
from functools import partial

import pytest

from calibseg.distributed import (
    get_client,
    map_cases,
    resolve_mode,
    run_training_jobs,
    submit_training,
)


@pytest.fixture(scope="module")
def gpu_cluster():
    """A 2-process LocalCluster whose workers each declare one (pretend) GPU."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        resources={"GPU": 1},
    )
    yield cluster
    cluster.close()


def test_modes_are_validated():
    assert resolve_mode() == "inprocess"
    assert resolve_mode(workers=2) == "local"
    assert resolve_mode(scheduler="tcp://127.0.0.1:8786") == "scheduler"
    with pytest.raises(ValueError, match="not both"):
        resolve_mode("tcp://h:1", 2)
    with pytest.raises(ValueError, match="positive integer"):
        resolve_mode(workers=0)
    with pytest.raises(ValueError, match="address like tcp://"):
        resolve_mode(scheduler="localhost")
    with get_client() as c:
        assert c is None


def test_inprocess_map_keeps_order_and_raises():
    assert map_cases(partial(operator.mul, 3), [1, 2, 3], progress=True) == [3, 6, 9]
    with pytest.raises(ValueError, match="invalid literal"):
        map_cases(int, ["1", "x"], progress=False)


def test_scheduler_map_matches_inprocess_and_runs_on_workers(gpu_cluster):
    items = list(range(12))
    fn = partial(operator.pow, 2)
    assert map_cases(fn, items, scheduler=gpu_cluster.scheduler_address) == [2**i for i in items]
    # the error of a failing case comes back with its type and message
    with pytest.raises(ValueError, match="invalid literal for int"):
        map_cases(int, ["4", "five", "6"], scheduler=gpu_cluster.scheduler_address, progress=False)


def test_submit_training_uses_gpu_resource_on_worker_processes(gpu_cluster):
    from distributed import Client

    jobs = [(dict, {"member": i, "seed": 10 + i}) for i in range(3)] + [(os.getpid, {})]
    out = submit_training(jobs, scheduler=gpu_cluster.scheduler_address, progress=False)
    assert out[:3] == [{"member": i, "seed": 10 + i} for i in range(3)]
    with Client(gpu_cluster) as c:
        worker_pids = set(c.run(os.getpid).values())
        assert out[3] in worker_pids and out[3] != os.getpid()
        # a task asking for a resource no worker has never runs → not done within 1 s
        fut = c.submit(os.getpid, resources={"TPU": 1}, pure=False)
        with pytest.raises(TimeoutError):
            fut.result(timeout=1)
        fut.cancel()
    # in-process: same results, run here
    assert submit_training([(dict, {"a": 1}), (os.getpid, {})], progress=False) == [
        {"a": 1},
        os.getpid(),
    ]
    with pytest.raises(TypeError, match="callable"):
        submit_training([("not callable", {})])


def test_run_training_jobs_serial_and_on_workers(gpu_cluster):
    """Named jobs: in-process one after another (on_done after each, in this process), or as
    Dask tasks on worker processes; results by name in job order either way."""
    seen = []

    def done(name, result):
        seen.append((name, result, len(seen)))

    jobs = [("b", os.getpid, {}), ("a", str, {"object": 7})]
    here = run_training_jobs(jobs, on_done=done)
    assert list(here) == ["b", "a"] and here == {"b": str(os.getpid()), "a": "7"}
    assert seen == [("b", str(os.getpid()), 0), ("a", "7", 1)]
    there = run_training_jobs(jobs, scheduler=gpu_cluster.scheduler_address)
    assert list(there) == ["b", "a"] and there["a"] == "7"
    assert there["b"] != str(os.getpid())  # ran on a worker process
    with pytest.raises(ValueError, match="distinct"):
        run_training_jobs([("x", str, {}), ("x", str, {})])


def _exit_slowly(x: int) -> tuple[int, str | None, bool]:
    """A task after which its worker process takes 4.5 s to exit (the exit handlers that
    multiprocessing runs before the process ends), as torch + MONAI workers do on a slow CPU.
    Returns ``x + 1``, the worker's MALLOC_TRIM_THRESHOLD_ and whether Dask profiles it."""
    import time
    from multiprocessing.util import Finalize

    import dask

    Finalize(None, time.sleep, args=(4.5,), exitpriority=0)
    profiled = bool(dask.config.get("distributed.worker.profile.enabled"))
    return x + 1, os.environ.get("MALLOC_TRIM_THRESHOLD_"), profiled


def test_local_cluster_workers_suit_long_torch_tasks(caplog, monkeypatch):
    """Local workers keep glibc's adaptive mmap threshold (no MALLOC_TRIM_THRESHOLD_, which Dask
    sets by default), are not profiled, and, slower to exit than the 4 s a nanny grants them,
    finish their exit: no kill, no warning, results intact."""
    import logging

    # a nanny with Dask's defaults writes the variable into its own process's environment
    # (this module's other cluster did): start from a caller that has not set it
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with caplog.at_level(logging.WARNING, logger="distributed"):
        done = map_cases(_exit_slowly, [1, 2], workers=2, progress=False)
    assert done == [(2, None, False), (3, None, False)]
    killed = [r.getMessage() for r in caplog.records if "still alive" in r.getMessage()]
    assert killed == []


def test_submit_training_refuses_a_bare_bundle_path():
    with pytest.raises(TypeError, match="not a bundle path"):
        submit_training("bundles/synthetic_baseline_ce_00000000")


def test_distributed_imports_nothing_above_its_layer():
    """distributed sits at the bottom (with storage): no import of calibseg's higher layers,
    at module level or inside a function."""
    import ast
    import pathlib

    import calibseg.distributed as D

    for path in pathlib.Path(D.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.startswith("calibseg"):
                    assert n.split(".")[1] in ("storage", "distributed"), (path.name, n)
