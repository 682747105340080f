import math

import numpy as np
import pytest
import torch

from calibseg.metrics.uncertainty import (
    UncertaintyAccumulator,
    entropy,
    normalized_cross_correlation,
    one_minus_max_prob,
    uncertainty_maps,
)


def _members(m=5, c=3, shape=(4, 5, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(m, c, *shape, generator=g, dtype=torch.float64) * 2, dim=1)


def test_entropy_uniform_and_onehot_in_nats():
    c = 4
    u = torch.full((c, 2, 2, 2), 1 / c)
    assert torch.allclose(entropy(u), torch.full((2, 2, 2), math.log(c)))
    oh = torch.zeros(c, 2, 2, 2)
    oh[1] = 1
    assert torch.equal(entropy(oh), torch.zeros(2, 2, 2))
    assert torch.allclose(one_minus_max_prob(u), torch.full((2, 2, 2), 0.75))


def test_streaming_equals_stacked_formulas():
    p = _members()
    comb, maps = uncertainty_maps(list(p))
    pbar = p.mean(0)
    h = -(pbar * pbar.log()).sum(0)
    alea = (-(p * p.log()).sum(1)).mean(0)
    assert torch.allclose(comb, pbar)
    assert torch.allclose(maps["entropy"], h)
    assert torch.allclose(maps["aleatoric"], alea)
    assert torch.allclose(maps["epistemic"], h - alea)
    assert (maps["epistemic"] >= 0).all()
    assert torch.allclose(maps["variance"], p.var(0, unbiased=False))
    assert torch.allclose(maps["1mmaxp"], 1 - pbar.amax(0))


def test_identical_members_have_zero_epistemic_and_variance():
    p = _members(m=1)[0]
    _, maps = uncertainty_maps([p, p, p])
    assert torch.allclose(maps["epistemic"], torch.zeros_like(maps["epistemic"]), atol=1e-12)
    assert torch.allclose(maps["variance"], torch.zeros_like(maps["variance"]), atol=1e-12)


def test_weighted_and_logit_mean():
    p = _members(m=3)
    w = [0.5, 0.3, 0.2]
    comb, maps = uncertainty_maps(list(p), weights=[5, 3, 2], method="weighted")
    wt = torch.tensor(w, dtype=torch.float64).view(3, 1, 1, 1, 1)
    assert torch.allclose(comb, (wt * p).sum(0))
    assert torch.allclose(maps["variance"], (wt * p**2).sum(0) - comb**2)
    comb_g, _ = uncertainty_maps(list(p), method="logit-mean")
    assert torch.allclose(comb_g, torch.softmax(p.log().mean(0), 0))
    assert torch.allclose(comb_g.sum(0), torch.ones(p.shape[2:], dtype=torch.float64))


def test_accumulator_errors():
    acc = UncertaintyAccumulator()
    with pytest.raises(ValueError, match="no member"):
        acc.maps()
    acc.add(torch.full((2, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="shapes differ"):
        acc.add(torch.full((3, 2, 2, 2), 1 / 3))
    with pytest.raises(ValueError, match="unknown method"):
        UncertaintyAccumulator("median")


def test_ncc_against_numpy_and_degenerate():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 4, 4, 3, generator=g)
    b = 0.5 * a + 0.1 * torch.rand(2, 4, 4, 3, generator=g)
    ncc = normalized_cross_correlation(a, b, dim=(1, 2, 3))
    for c in range(2):
        ref = np.corrcoef(a[c].flatten().numpy(), b[c].flatten().numpy())[0, 1]
        assert ncc[c].item() == pytest.approx(ref, abs=1e-9)
    assert normalized_cross_correlation(a, -a).item() == pytest.approx(-1.0)
    const = torch.full((4, 4, 3), 0.3)
    assert math.isnan(normalized_cross_correlation(a[0], const).item())
