"""Temperature scaling: recovers temperatures that generated the labels; keeps the argmax."""

import pytest
import torch

from calibseg.posthoc import apply_temperature, fit_temperature, nll


def _probs(n=200_000, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 3, 1), g


def test_recovers_the_generating_temperature():
    p, g = _probs()
    # labels drawn from softmax(log p / 2): the network is over-confident by a factor 2
    y = torch.multinomial(torch.softmax(torch.log(p) / 2.0, 1), 1, generator=g)[:, 0]
    t = fit_temperature(p, y)
    assert t.ndim == 0 and float(t) == pytest.approx(2.0, rel=0.03)
    assert nll(p, y, t) < nll(p, y)


def test_recovers_per_class_temperatures():
    p, g = _probs(seed=1)
    true = torch.tensor([0.7, 1.0, 1.5, 2.5], dtype=torch.float64)
    scaled = torch.softmax(torch.log(p.double()) / true, 1)
    y = torch.multinomial(scaled, 1, generator=g)[:, 0]
    t = fit_temperature(p, y, per_class=True)
    torch.testing.assert_close(t, true, rtol=0.05, atol=0.0)


def test_calibrated_network_keeps_temperature_one():
    p, g = _probs(seed=2)
    y = torch.multinomial(p, 1, generator=g)[:, 0]
    assert float(fit_temperature(p, y)) == pytest.approx(1.0, abs=0.03)


def test_apply_keeps_argmax_and_sums_to_one_on_volumes():
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(2, 3, 8, 8, 4, generator=g) * 4, 1)
    q = apply_temperature(p, 1.7)
    assert torch.equal(q.argmax(1), p.argmax(1))
    torch.testing.assert_close(q.sum(1), torch.ones(2, 8, 8, 4))
    assert q.max() < p.max()  # T > 1 softens
    # the by-hand definition on one voxel: softmax(log p / T)
    v = p[0, :, 0, 0, 0].double()
    torch.testing.assert_close(
        q[0, :, 0, 0, 0].double(), torch.softmax(v.log() / 1.7, 0), rtol=1e-5, atol=1e-7
    )


def test_volume_layout_matches_flat_layout():
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(2, 3, 16, 16, 8, generator=g) * 3, 1)
    y = torch.multinomial(p.movedim(1, -1).reshape(-1, 3), 1, generator=g).reshape(2, 1, 16, 16, 8)
    flat = fit_temperature(p.movedim(1, -1).reshape(-1, 3), y.reshape(-1))
    torch.testing.assert_close(fit_temperature(p, y), flat)


def test_bad_inputs():
    p, _ = _probs(n=10)
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(p, torch.full((10,), 4))
    with pytest.raises(ValueError, match="10 voxels"):
        fit_temperature(p, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(p[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="temperatures"):
        apply_temperature(p, torch.ones(3))
