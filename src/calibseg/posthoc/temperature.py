"""Temperature scaling (Guo et al., 2017) fitted by negative log-likelihood.

A network's probabilities ``p`` are rescaled as ``softmax(log(p) / T)``: ``log p`` equals the
logits up to a per-voxel constant, which the softmax ignores, so saved probability maps are
enough and no network is rerun. One temperature for all classes keeps every voxel's argmax (the
segmentation and its Dice are unchanged); one temperature per class (a diagonal "vector
scaling" without biases) can move the argmax. Temperatures are fitted on held-out data (the
validation split), never on the test split.
"""

from __future__ import annotations

import torch

__all__ = ["fit_temperature", "apply_temperature", "nll"]

_TINY = 1e-12  # floor of probabilities before the log (float32 softmax can underflow to 0)


def _flatten(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, *sp] probabilities and [B, 1, *sp] (or [B, *sp]) labels → [N, C], [N]."""
    if probs.ndim < 2:
        raise ValueError(
            f"probs must be [N, C] or [B, C, *spatial], got shape {tuple(probs.shape)}."
        )
    c = probs.shape[1]
    if probs.ndim == 2:
        p, y = probs, labels.reshape(-1)
    else:
        p = probs.movedim(1, -1).reshape(-1, c)
        y = labels.reshape(-1)
    if y.numel() != p.shape[0]:
        raise ValueError(
            f"labels hold {y.numel()} values for {p.shape[0]} voxels of probs {tuple(probs.shape)}."
        )
    if y.numel() == 0:
        raise ValueError("temperature scaling needs at least one voxel, got an empty batch.")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise ValueError(
            f"labels must be class indices in [0, {c - 1}], got [{int(y.min())}, {int(y.max())}]."
        )
    return p, y


def nll(
    probs: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> float:
    """Mean negative log-likelihood (nats per voxel) of ``softmax(log(probs) / temperature)``.

    Args:
        probs: ``[N, C]`` or ``[B, C, *spatial]`` probabilities.
        labels: class indices, ``[N]`` or ``[B, 1, *spatial]``.
        temperature: a scalar or one value per class ``[C]``.
    """
    p, y = _flatten(probs, labels)
    logits = torch.log(p.double().clamp_min(_TINY)) / torch.as_tensor(
        temperature, dtype=torch.float64
    )
    return float(torch.nn.functional.cross_entropy(logits, y))


def fit_temperature(
    probs: torch.Tensor,
    labels: torch.Tensor,
    per_class: bool = False,
    max_voxels: int | None = 2_000_000,
    seed: int = 0,
) -> torch.Tensor:
    """Temperature(s) minimising the NLL of ``softmax(log(probs) / T)`` on (probs, labels).

    Args:
        probs: ``[N, C]`` or ``[B, C, *spatial]`` probabilities of held-out data.
        labels: class indices ``[N]`` or ``[B, 1, *spatial]``.
        per_class: one temperature per class (``[C]``) instead of one for all (scalar).
        max_voxels: fit on a uniform random subset of at most this many voxels (seeded), to
            bound time and memory on large validation sets; None uses all.
        seed: seed of that subset.

    Returns:
        float64 tensor: scalar, or ``[C]`` with ``per_class``; each in [0.05, 20].

    Raises:
        ValueError: for mismatched shapes, labels outside [0, C), or no voxels.
    """
    p, y = _flatten(probs, labels)
    if max_voxels is not None and p.shape[0] > max_voxels:
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(p.shape[0], generator=g)[: int(max_voxels)]
        p, y = p[idx], y[idx]
    z = torch.log(p.double().clamp_min(_TINY))
    log_t = torch.zeros(p.shape[1] if per_class else (), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return log_t.detach().exp().clamp(0.05, 20.0)


def apply_temperature(probs: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``softmax(log(probs) / T)`` over the channel axis 1 of ``[B, C, *spatial]`` (or ``[N, C]``).

    ``temperature``: scalar or ``[C]`` (one per class). Returns probabilities of the same shape.
    """
    t = torch.as_tensor(temperature, dtype=torch.float64)
    z = torch.log(probs.double().clamp_min(_TINY))
    if t.ndim == 1:
        if t.numel() != probs.shape[1]:
            raise ValueError(f"{t.numel()} temperatures for {probs.shape[1]} classes.")
        t = t.view(1, -1, *([1] * (probs.ndim - 2)))
    return torch.softmax(z / t, dim=1).to(probs.dtype)
