"""Pieces of the bundle workflows: per-epoch seeding, one-hot batches, probabilities on save."""

from __future__ import annotations

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.transforms import Randomizable

from calibseg.bundles.workflow import EpochSeeder, PrepareOneHot, Probabilitiesd, derive_seed


class _Draw(Randomizable):
    """A random transform: adds one draw of its own RNG to the item."""

    def randomize(self, data=None) -> None:
        self.value = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, item: dict) -> dict:
        self.randomize()
        return {**item, "draw": self.value}


def _epochs_of_engine(n_items: int, batch: int, epochs: int, seed: int) -> list[list[tuple]]:
    ds = Dataset([{"case": i} for i in range(n_items)], transform=_Draw())
    gen = torch.Generator()
    loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, num_workers=0)
    seen: list[list[tuple]] = []
    engine = Engine(lambda e, b: list(zip(b["case"].tolist(), b["draw"].tolist(), strict=True)))
    EpochSeeder(seed, ds, gen).attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append([]))
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen[-1].extend(e.state.output))
    engine.run(loader, max_epochs=epochs)
    return seen


def _epochs_of_fresh_loaders(n_items: int, batch: int, epochs: int, seed: int):
    """The reference: one monai DataLoader per epoch, its generator seeded (seed, epoch, 2)."""
    ds = Dataset([{"case": i} for i in range(n_items)], transform=_Draw())
    out = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(derive_seed(seed, epoch, 2))
        loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, num_workers=0)
        out.append(
            [p for b in loader for p in zip(b["case"].tolist(), b["draw"].tolist(), strict=True)]
        )
    return out


def test_epoch_seeding_equals_one_loader_per_epoch():
    # 12 items in full batches (the sampler ends one call after the last batch) and 5 in a
    # partial last batch: both give the fresh-loader streams, order and augmentation draws
    for n_items in (12, 5):
        got = _epochs_of_engine(n_items, 2, 3, seed=7)
        assert got == _epochs_of_fresh_loaders(n_items, 2, 3, seed=7)
        assert sorted(c for c, _ in got[0]) == list(range(n_items))
        assert [c for c, _ in got[0]] != [c for c, _ in got[1]]  # reshuffled per epoch
    assert _epochs_of_engine(12, 2, 2, seed=8) != _epochs_of_engine(12, 2, 2, seed=7)


def test_prepare_one_hot_and_probabilities():
    label = torch.tensor([0, 2, 1, 2]).reshape(1, 1, 2, 2, 1)
    x, y = PrepareOneHot(3)({"image": torch.zeros(1, 1, 2, 2, 1), "label": label})
    assert y.dtype == torch.float32 and y.shape == (1, 3, 2, 2, 1)
    assert torch.equal(y.argmax(1, keepdim=True), label) and torch.equal(
        y.sum(1), torch.ones(1, 2, 2, 1)
    )
    soft = torch.full((1, 3, 2, 2, 1), 1 / 3)
    assert torch.equal(PrepareOneHot(3)({"image": x, "label": soft})[1], soft)

    p = torch.tensor([[0.5, 0.0], [0.3, 0.0], [0.3, 0.0]]).reshape(3, 2, 1, 1)
    p[1, 0] = -0.1  # interpolation undershoot
    out = Probabilitiesd("pred")({"pred": p, "case": "c7"})
    q = out["pred"].as_tensor()
    np.testing.assert_allclose(q[:, 0].flatten(), [0.5 / 0.8, 0.0, 0.3 / 0.8], rtol=1e-6)
    np.testing.assert_allclose(q[:, 1].flatten(), [1.0, 0.0, 0.0])  # outside every window
    assert out["pred"].meta["filename_or_obj"] == "c7"
