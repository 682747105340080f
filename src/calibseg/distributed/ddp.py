"""Helpers for ``torchrun`` + DistributedDataParallel training (gloo on CPU, NCCL on GPU).

Typical use inside a training entry point started by
``torchrun --nproc-per-node N -m calibseg train …``::

    rank, world, dist_on = ddp.init_from_env()
    model = ddp.wrap_model(model)
    sampler = ddp.distributed_sampler(dataset, shuffle=True, seed=seed)
    ...
    if ddp.is_main_process():
        save_checkpoint(...)
    ddp.barrier()
    ddp.cleanup()

Without ``WORLD_SIZE`` > 1 in the environment every helper is a no-op, so the same code runs
single-process.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "local_rank",
    "device",
    "wrap_model",
    "unwrap_model",
    "distributed_sampler",
    "barrier",
    "cleanup",
]


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (0 if unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device():
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int, bool]:
    """Join the process group described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``.

    Uses NCCL when CUDA is available, gloo otherwise (``backend`` overrides), rendezvous via
    ``MASTER_ADDR`` / ``MASTER_PORT`` (set by torchrun). Returns ``(rank, world_size,
    is_distributed)``; ``(0, 1, False)`` when ``WORLD_SIZE`` is unset or 1. Idempotent.
    """
    import datetime

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    dist = _dist()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), True
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={world} but {key} is not set: start with torchrun, e.g. "
                "`torchrun --nproc-per-node 2 -m calibseg train …`."
            )
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend=backend,
        rank=int(os.environ["RANK"]),
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist.get_rank(), dist.get_world_size(), True


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and logs."""
    return get_rank() == 0


def wrap_model(model: Any, find_unused_parameters: bool = False) -> Any:
    """``DistributedDataParallel(model)`` on this process's device when distributed, else ``model``.

    Gradients are averaged over processes in ``backward()``, so all ranks keep identical
    weights after each optimizer step.
    """
    if not is_distributed():
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    dev = device()
    model = model.to(dev)
    ids = [dev.index] if dev.type == "cuda" else None
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = (
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if dev.type == "cuda" else model
        )
    return DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def unwrap_model(model: Any) -> Any:
    """The underlying module of a DDP-wrapped model (for saving state dicts)."""
    return getattr(model, "module", model)


def distributed_sampler(dataset: Any, shuffle: bool = True, seed: int = 0) -> Any:
    """A ``DistributedSampler`` giving each rank a disjoint shard, or ``None`` if not distributed.

    Call ``sampler.set_epoch(epoch)`` each epoch so shuffling differs between epochs.
    """
    if not is_distributed():
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(
        dataset,
        num_replicas=get_world_size(),
        rank=get_rank(),
        shuffle=shuffle,
        seed=seed,
    )


def barrier() -> None:
    """Wait for all processes (no-op when not distributed)."""
    if is_distributed():
        _dist().barrier()


def cleanup() -> None:
    """Leave the process group (no-op when none is initialised)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
