"""Tiny training sanity check: optimising the ACE loss lowers it on a 2-class toy problem."""

from __future__ import annotations

import pytest
import torch

from calibseg.losses import HardL1ACELoss, SoftL1ACELoss


@pytest.mark.parametrize("cls", [HardL1ACELoss, SoftL1ACELoss])
def test_ace_decreases_when_trained(cls):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 32, 32, generator=gen)
    # noisy labels: P(y = 1 | x) = sigmoid(2x), so a calibrated model exists
    labels = (torch.rand(x.shape, generator=gen) < torch.sigmoid(2 * x)).long()
    model = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # start badly over-confident and biased
        model.weight.copy_(torch.tensor([[[[-6.0]]], [[[6.0]]]]))
        model.bias.copy_(torch.tensor([1.0, -1.0]))
    loss_fn = cls(softmax=True, to_onehot_y=True, num_bins=10)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses[-5:]) < 0.5 * losses[0]
    # the learned slope moves from 6 towards the calibrated 1
    slope = (model.weight[1] - model.weight[0]).item() / 2
    assert 0.5 < slope < 2.0
