"""Uncertainty maps of a prediction or an ensemble, and their streaming accumulation.

All entropies are in **nats** (natural logarithm). For an ensemble of M members with
probabilities ``p_m`` (weights ``w_m``, summing to 1) and the mixture ``p̄ = Σ w_m p_m``:

- total (predictive entropy)   ``H[p̄] = −Σ_c p̄_c log p̄_c``
- aleatoric (expected entropy) ``E_m H[p_m] = −Σ_m w_m Σ_c p_mc log p_mc``
- epistemic (mutual information) ``total − aleatoric`` (≥ 0 by concavity of the entropy)
- ``1 − max_c p̄_c`` and the per-class variance ``Σ_m w_m p_mc² − p̄_c²`` across members.

Streaming: :class:`UncertaintyAccumulator` keeps only running sums (Σ w p, Σ w p², Σ w p log p,
Σ w log p), so memory does not grow with the number of members.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from calibseg.metrics.choices import COMBINE_METHODS

__all__ = [
    "entropy",
    "one_minus_max_prob",
    "uncertainty_maps",
    "UncertaintyAccumulator",
    "normalized_cross_correlation",
    "MAP_NAMES",
]

#: names of the maps returned by :func:`uncertainty_maps` / :meth:`UncertaintyAccumulator.maps`
MAP_NAMES = ("entropy", "aleatoric", "epistemic", "1mmaxp", "variance")


def entropy(prob: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Shannon entropy in nats over the class axis ``dim`` (``[C, *spatial]`` → ``[*spatial]``);
    ``0 log 0 = 0`` (``torch.special.entr``)."""
    return torch.special.entr(prob).sum(dim)


def one_minus_max_prob(prob: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``1 − max_c p_c`` over the class axis ``dim`` (``[C, *spatial]`` → ``[*spatial]``)."""
    return 1.0 - prob.amax(dim)


class UncertaintyAccumulator:
    """Running sums over ensemble members for one case; memory independent of the member count.

    Args:
        method: ``"mean"`` (arithmetic mean of probabilities), ``"logit-mean"`` (mean of
            log-probabilities, renormalised with a softmax: the normalised geometric mean) or
            ``"weighted"`` (weighted arithmetic mean; weights passed to :meth:`add`).
        eps: probabilities are clamped to ``[eps, 1]`` before taking logs for ``logit-mean``.
        dtype: dtype of the running sums (float64 by default; float32 halves the memory of
            large volumes at ~1e-7 relative error per member).

    The uncertainty decomposition (total/aleatoric/epistemic, variance) always refers to the
    (weighted) arithmetic mixture; ``method`` only changes the combined probability map (and
    ``1 − max p``, which is taken on the combined map).
    """

    METHODS = COMBINE_METHODS

    def __init__(
        self, method: str = "mean", eps: float = 1e-6, dtype: torch.dtype = torch.float64
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(self.METHODS)}.")
        self.method = method
        self.eps = eps
        self.dtype = dtype
        self.count = 0
        self.total_weight = 0.0
        self._sp: torch.Tensor | None = None
        self._sp2: torch.Tensor | None = None
        self._sh: torch.Tensor | None = None
        self._slog: torch.Tensor | None = None

    def add(self, prob: torch.Tensor, weight: float = 1.0) -> None:
        """Add one member's probabilities ``[C, *spatial]`` (classes first, sum to 1 over C)."""
        if weight < 0 or not torch.isfinite(torch.tensor(float(weight))):
            raise ValueError(f"member weights must be finite and >= 0, got {weight}.")
        p = prob.to(self.dtype)
        if self._sp is not None and p.shape != self._sp.shape:
            raise ValueError(
                f"member shapes differ: {tuple(p.shape)} vs {tuple(self._sp.shape)} "
                "(classes first); all members must predict the same grid and classes."
            )
        w = float(weight)
        h = entropy(p)
        if self._sp is None:
            self._sp, self._sp2, self._sh = w * p, w * p * p, w * h
            if self.method == "logit-mean":
                self._slog = w * torch.log(p.clamp(self.eps, 1.0))
        else:
            self._sp.add_(p, alpha=w)
            self._sp2.add_(p * p, alpha=w)
            self._sh.add_(h, alpha=w)
            if self.method == "logit-mean":
                self._slog.add_(torch.log(p.clamp(self.eps, 1.0)), alpha=w)
        self.count += 1
        self.total_weight += w

    def _check(self) -> float:
        if self._sp is None:
            raise ValueError("no member was added.")
        if self.total_weight <= 0:
            raise ValueError("member weights sum to 0.")
        return self.total_weight

    def mean(self) -> torch.Tensor:
        """The (weighted) arithmetic mixture ``p̄`` ``[C, *spatial]``."""
        return self._sp / self._check()

    def combined(self) -> torch.Tensor:
        """The combined probabilities ``[C, *spatial]`` according to ``method``."""
        if self.method == "logit-mean":
            return torch.softmax(self._slog / self._check(), dim=0)
        return self.mean()

    def maps(self) -> dict[str, torch.Tensor]:
        """Uncertainty maps: ``entropy``, ``aleatoric``, ``epistemic``, ``1mmaxp`` (each
        ``[*spatial]``) and ``variance`` (``[C, *spatial]``), in the accumulator dtype, nats."""
        wt = self._check()
        pbar = self._sp / wt
        total = entropy(pbar)
        alea = self._sh / wt
        return {
            "entropy": total,
            "aleatoric": alea,
            "epistemic": (total - alea).clamp_min(0.0),
            "1mmaxp": one_minus_max_prob(self.combined()),
            "variance": (self._sp2 / wt - pbar * pbar).clamp_min(0.0),
        }


def uncertainty_maps(
    member_probs: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | None = None,
    method: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combined probabilities and uncertainty maps of M members, each ``[C, *spatial]``.

    Returns ``(combined [C, *spatial], maps)`` as in :meth:`UncertaintyAccumulator.maps`.
    """
    n = len(member_probs)
    if n == 0:
        raise ValueError("need at least one member.")
    if weights is not None and len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} members.")
    acc = UncertaintyAccumulator(method)
    for i, p in enumerate(member_probs):
        acc.add(p, 1.0 if weights is None else float(weights[i]))
    return acc.combined(), acc.maps()


def normalized_cross_correlation(
    a: torch.Tensor, b: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Pearson-type NCC ``mean((a−ā)(b−b̄)) / (σ_a σ_b)`` over ``dim`` (all axes if None).

    Typical use: per class, ``a`` = predicted uncertainty ``[C, *spatial]`` and ``b`` = rater
    variance ``q(1−q)`` ``[C, *spatial]`` with ``dim`` = the spatial axes → ``[C]``.
    A constant map (zero standard deviation, e.g. identical raters) gives **NaN**.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    if dim is None:
        dim = tuple(range(a.ndim))
    da = a - a.mean(dim, keepdim=True)
    db = b - b.mean(dim, keepdim=True)
    cov = (da * db).mean(dim)
    sa = da.pow(2).mean(dim).sqrt()
    sb = db.pow(2).mean(dim).sqrt()
    den = sa * sb
    degenerate = (
        (sa <= 1e-12 * (a.abs().amax(dim) + 1e-300))
        | (sb <= 1e-12 * (b.abs().amax(dim) + 1e-300))
        | (den == 0)
    )
    return torch.where(degenerate, torch.full_like(cov, float("nan")), cov / den.clamp_min(1e-300))
