"""Error detection by uncertainty: AUROC, AURC and E-AURC (vectorised, sort-based).

- :func:`roc_auc` — area under the ROC curve of a score for binary labels (ties get the
  average rank, i.e. count ½, as ``sklearn.metrics.roc_auc_score``); NaN when only one class
  is present.
- :func:`aurc` — area under the risk–coverage curve: samples are accepted in order of
  decreasing confidence; the selective risk at coverage k/n is the mean risk of the k accepted
  samples; AURC is the mean of the selective risks over the coverages. Tied confidences are
  accepted together (the risk of a tie group is the one after the whole group is accepted), so
  the value does not depend on the order of ties.
- :func:`eaurc` — AURC minus the optimal AURC, the AURC of the ranking that accepts the
  samples in order of increasing risk one at a time (no tie groups: the optimal ranking of 0/1
  risks is almost all ties, and accepting each tie group at once would overstate the optimum).

Voxel level (:func:`voxel_error_detection`): error = argmax prediction ≠ consensus label,
voxels where raters disagree are ignored; risk is 0/1 and confidence the max probability.
Case level (:func:`case_aurc`): risk = 1 − Dice, confidence = −mean uncertainty.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["roc_auc", "aurc", "optimal_aurc", "eaurc", "voxel_error_detection", "case_aurc"]


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def roc_auc(scores, labels) -> float:
    """AUROC of ``scores`` (higher = more likely positive) for 0/1 ``labels`` (any shape).

    Mann–Whitney form with average ranks (one sort). NaN if all labels are equal.
    """
    s, y = _flat(scores), _flat(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same size, got {s.size} and {y.size}.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf values.")
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def aurc(confidence, risk) -> float:
    """Area under the risk–coverage curve (lower is better); tie groups accepted together."""
    c, r = _flat(confidence), _flat(risk)
    if c.shape != r.shape:
        raise ValueError(f"confidence and risk must have the same size, got {c.size} and {r.size}.")
    n = c.size
    if n == 0:
        return float("nan")
    if not (np.isfinite(c).all() and np.isfinite(r).all()):
        raise ValueError("confidence and risk must be finite.")
    order = np.argsort(-c, kind="stable")
    cs, rs = c[order], r[order]
    cum = np.cumsum(rs)
    # last index of each tie group in the sorted order
    ends = np.flatnonzero(np.r_[cs[1:] != cs[:-1], True])
    k = ends + 1  # coverage counts after each group
    sizes = np.diff(np.r_[0, k])
    selective = cum[ends] / k
    return float((sizes * selective).sum() / n)


def optimal_aurc(risk) -> float:
    """AURC of the ideal ranking: risks accepted in increasing order, one coverage at a time.

    Mean over k = 1..n of the mean of the k smallest risks (Geifman et al., 2019). NaN for no
    samples.
    """
    r = _flat(risk)
    if r.size == 0:
        return float("nan")
    if not np.isfinite(r).all():
        raise ValueError("risk must be finite.")
    rs = np.sort(r)
    return float((np.cumsum(rs) / np.arange(1, rs.size + 1)).mean())


def eaurc(confidence, risk) -> float:
    """Excess AURC: ``aurc(confidence, risk) − optimal_aurc(risk)`` (0 for an ideal ranking)."""
    r = _flat(risk)
    return aurc(confidence, r) - optimal_aurc(r)


def voxel_error_detection(
    prob: torch.Tensor,
    rater_labels: torch.Tensor,
    uncertainty: dict[str, torch.Tensor],
    region: torch.Tensor | None = None,
) -> dict[str, float]:
    """Voxel-level error detection for one case.

    Args:
        prob: ``[C, *spatial]`` predicted probabilities.
        rater_labels: ``[K, *spatial]`` integer label maps of K raters.
        uncertainty: name → ``[*spatial]`` uncertainty map (higher = less certain).
        region: optional ``[*spatial]`` bool mask of voxels to evaluate.

    Returns ``{"auroc_<name>": …, "aurc": …, "eaurc": …, "error_rate": …}``; AURC/E-AURC use
    0/1 risk and confidence = max probability. Voxels where raters disagree are ignored.
    """
    if rater_labels.shape[1:] != prob.shape[1:]:
        raise ValueError(
            f"rater labels {tuple(rater_labels.shape[1:])} and prediction {tuple(prob.shape[1:])} "
            "have different spatial shapes."
        )
    lab = rater_labels.long()
    agree = (lab == lab[:1]).all(0)
    if region is not None:
        agree = agree & region.bool()
    pred = prob.argmax(0)
    err = (pred != lab[0])[agree]
    out = {"error_rate": float(err.double().mean()) if err.numel() else float("nan")}
    for name, u in uncertainty.items():
        out[f"auroc_{name}"] = roc_auc(u[agree], err)
    conf = prob.amax(0)[agree]
    out["aurc"] = aurc(conf, err)
    out["eaurc"] = eaurc(conf, err)
    return out


def case_aurc(dice, mean_uncertainty) -> dict[str, float]:
    """Case-level AURC/E-AURC: risk = 1 − Dice per case, confidence = −mean uncertainty.

    Cases with a NaN Dice or uncertainty are dropped.
    """
    d, u = _flat(dice), _flat(mean_uncertainty)
    keep = np.isfinite(d) & np.isfinite(u)
    risk, conf = 1.0 - d[keep], -u[keep]
    return {"aurc_case": aurc(conf, risk), "eaurc_case": eaurc(conf, risk)}
