import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from calibseg.metrics.error_detection import (
    aurc,
    case_aurc,
    eaurc,
    optimal_aurc,
    roc_auc,
    voxel_error_detection,
)


def _aurc_loop(conf, risk):
    """Textbook AURC: mean selective risk over coverages k = 1..n (distinct confidences)."""
    order = np.argsort(-conf)
    r = risk[order]
    return float(np.mean([r[: k + 1].mean() for k in range(len(r))]))


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # many ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(-s, y) == pytest.approx(1 - roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(roc_auc(s, np.zeros(500)))


def test_aurc_matches_textbook_loop_and_ideal_is_zero_excess():
    rng = np.random.default_rng(1)
    conf = rng.random(200)
    risk = (rng.random(200) > conf).astype(float)
    assert aurc(conf, risk) == pytest.approx(_aurc_loop(conf, risk), abs=1e-12)
    # a perfect ranking with distinct confidences: errors least confident
    perfect = -risk + 1e-3 * rng.random(200)
    assert eaurc(perfect, risk) == pytest.approx(0.0, abs=1e-12)
    assert eaurc(conf, risk) > 0
    # hand example: risks [0, 1] accepted in that order → (0 + 1/2)/2; reversed → (1 + 1/2)/2
    assert aurc([0.9, 0.1], [0, 1]) == pytest.approx(0.25)
    assert aurc([0.1, 0.9], [0, 1]) == pytest.approx(0.75)
    assert eaurc([0.1, 0.9], [0, 1]) == pytest.approx(0.5)


def test_eaurc_worked_example_by_hand():
    # accepted in order 0.9, 0.8, 0.7, 0.6 → risks 0, 1, 0, 1; selective risks 0, 1/2, 1/3, 1/2
    conf, risk = [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1]
    assert aurc(conf, risk) == pytest.approx(1 / 3, abs=1e-12)
    # optimum accepts 0, 0, 1, 1 one at a time: selective risks 0, 0, 1/3, 1/2 → 5/24
    assert optimal_aurc(risk) == pytest.approx(5 / 24, abs=1e-12)
    assert eaurc(conf, risk) == pytest.approx(1 / 8, abs=1e-12)
    # perfect ranking of the same risks: E-AURC exactly 0 (the tie-group optimum gave −1/24)
    assert eaurc([0.9, 0.7, 0.8, 0.6], risk) == pytest.approx(0.0, abs=1e-12)
    # ties in the confidence cannot reach the optimum: all tied → AURC = mean risk = 1/2
    assert eaurc([0.5] * 4, risk) == pytest.approx(1 / 2 - 5 / 24, abs=1e-12)


def test_optimal_aurc_matches_loop_over_coverages():
    rng = np.random.default_rng(3)
    risk = (rng.random(300) < 0.1).astype(float)
    loop = np.mean([np.sort(risk)[:k].mean() for k in range(1, risk.size + 1)])
    assert optimal_aurc(risk) == pytest.approx(loop, abs=1e-12)
    assert math.isnan(optimal_aurc([]))


def test_aurc_ties_accepted_together():
    # all confidences equal: only full coverage is reachable → AURC = mean risk
    assert aurc(np.ones(4), [1, 0, 0, 0]) == pytest.approx(0.25)
    assert aurc(np.ones(4), [0, 0, 0, 1]) == pytest.approx(0.25)


def test_voxel_error_detection_ignores_dissensus():
    # 1-D strip of 4 voxels as [C=2, 4, 1, 1]; raters disagree at voxel 3
    prob = torch.tensor([[0.9, 0.2, 0.6, 0.5], [0.1, 0.8, 0.4, 0.5]]).view(2, 4, 1, 1)
    labels = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]]).view(2, 4, 1, 1)
    unc = {"u": torch.tensor([0.1, 0.2, 0.9, 0.0]).view(4, 1, 1)}
    out = voxel_error_detection(prob, labels, unc)
    # evaluated voxels 0..2, errors [0, 0, 1]: the error has the highest uncertainty
    assert out["error_rate"] == pytest.approx(1 / 3)
    assert out["auroc_u"] == pytest.approx(1.0)
    conf = np.array([0.9, 0.8, 0.6])
    assert out["aurc"] == pytest.approx(_aurc_loop(conf, np.array([0.0, 0, 1])))
    assert out["eaurc"] == pytest.approx(0.0)


def test_case_aurc_drops_nan_cases():
    res = case_aurc([0.9, 0.5, float("nan")], [0.1, 0.4, 0.2])
    # risks [0.1, 0.5] in order of confidence −u: (0.1 + 0.3)/2
    assert res["aurc_case"] == pytest.approx(0.2)
    assert res["eaurc_case"] == pytest.approx(0.0)
