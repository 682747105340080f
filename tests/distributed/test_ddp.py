"""DDP helpers: two gloo processes (as torchrun would start them) train a tiny model for one epoch on CPU."""

from __future__ import annotations

import os

import pytest
import torch

from calibseg.distributed import ddp


def _train_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank (forked child): join the gloo group from env vars, train one epoch, report."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    r, world, on = ddp.init_from_env()
    assert (r, world, on) == (rank, 2, True)
    torch.manual_seed(rank)  # different local init: DDP must broadcast rank 0's weights
    model = ddp.wrap_model(torch.nn.Linear(3, 1))
    x, y = _data()
    ds = torch.utils.data.TensorDataset(x, y)
    sampler = ddp.distributed_sampler(ds, shuffle=False, seed=0)
    sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for xb, yb in loader:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    state = ddp.unwrap_model(model).state_dict()
    torch.save(torch.cat([t.flatten() for t in state.values()]), f"{out_dir}/weights_{rank}.tmp")
    if ddp.is_main_process():
        torch.save(state, f"{out_dir}/checkpoint_rank{rank}.pt")
    ddp.barrier()
    ddp.cleanup()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1


def _reference() -> torch.Tensor:
    """One epoch on one process with the union of both ranks' batches (batch 8)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(0, 16, 8):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[i : i + 8]), y[i : i + 8]).backward()
        opt.step()
    return torch.cat([t.detach().flatten() for t in model.state_dict().values()])


def test_helpers_are_noops_without_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert ddp.init_from_env() == (0, 1, False)
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap_model(model) is model and ddp.unwrap_model(model) is model
    assert ddp.distributed_sampler([1, 2, 3]) is None and ddp.is_main_process()
    ddp.barrier()
    ddp.cleanup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="start with torchrun"):
        ddp.init_from_env()


@pytest.mark.slow
def test_two_gloo_ranks_average_gradients_and_only_rank0_writes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children reuse the imported torch (fast); each joins the group via env vars
    mp.start_processes(_train_rank, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    w0, w1 = (torch.load(tmp_path / f"weights_{r}.tmp") for r in (0, 1))
    assert torch.equal(w0, w1)  # bit-identical weights on both ranks
    assert [p.name for p in tmp_path.glob("checkpoint_*.pt")] == ["checkpoint_rank0.pt"]
    saved = torch.load(tmp_path / "checkpoint_rank0.pt")
    got = torch.cat([t.flatten() for t in saved.values()])
    # averaged gradients of two half-batches == the gradient of the full batch
    torch.testing.assert_close(got, _reference(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, torch.cat([t.flatten() for t in _init().values()]))


def _init():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).state_dict()
