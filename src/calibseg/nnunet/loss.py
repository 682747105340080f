"""The mL1-ACE term added to nnU-Net's own Dice+CE (or Dice+BCE for regions) loss.

nnU-Net's loss sees logits ``[B, C, *spatial]`` and, per resolution of deep supervision,
either label maps ``[B, 1, *spatial]`` (possibly holding the ignore label) or, for region
training, binary region maps ``[B, R, *spatial]`` with the ignore mask as an extra last
channel. :class:`ACEPlusLoss` wraps nnU-Net's loss for one resolution and adds
``ace_weight × mL1-ACE`` computed by calibseg's :class:`~calibseg.losses.HardL1ACELoss` or
:class:`~calibseg.losses.SoftL1ACELoss` on the probabilities (softmax, or sigmoid for
regions) of the voxels that are not ignored. nnU-Net's ``DeepSupervisionWrapper`` keeps
applying its per-resolution weights around it.

This module needs only torch; nnU-Net itself is not imported.
"""

from __future__ import annotations

import torch
from torch import nn

from calibseg.losses import HardL1ACELoss, SoftL1ACELoss

__all__ = ["ACE_LOSSES", "ACEPlusLoss", "make_ace"]

ACE_LOSSES = ("hardl1ace", "softl1ace")


def make_ace(
    kind: str, num_bins: int = 20, ignore_empty_classes: bool = True
) -> HardL1ACELoss | SoftL1ACELoss:
    """calibseg's mL1-ACE loss on probabilities and one-hot targets (all channels, mean).

    ``ignore_empty_classes`` (default True, as in the mL1-ACE paper's code): an (image, class)
    pair whose target is all zero is left out and the mean runs over the remaining pairs.
    Raises ValueError for an unknown ``kind`` (``hardl1ace`` or ``softl1ace``).
    """
    if kind == "hardl1ace":
        return HardL1ACELoss(
            num_bins=num_bins, include_background=True, ignore_empty_classes=ignore_empty_classes
        )
    if kind == "softl1ace":
        return SoftL1ACELoss(
            num_bins=num_bins, include_background=True, ignore_empty_classes=ignore_empty_classes
        )
    raise ValueError(f"unknown ACE loss {kind!r}: use {' or '.join(ACE_LOSSES)}.")


class ACEPlusLoss(nn.Module):
    """``base(logits, target) + ace_weight × ACE(probabilities, one-hot target)``.

    Args:
        base: nnU-Net's loss at one resolution (e.g. ``DC_and_CE_loss``).
        ace: an mL1-ACE loss from :func:`make_ace` (applied to probabilities).
        ace_weight: non-negative weight of the ACE term.
        regions: True for region training (sigmoid per channel, binary region targets).
        ignore_label: label value to leave out (label training), or None.
        has_ignore_channel: region training with an ignore mask in the last target channel.
    """

    def __init__(
        self,
        base: nn.Module,
        ace: nn.Module,
        ace_weight: float,
        regions: bool = False,
        ignore_label: int | None = None,
        has_ignore_channel: bool = False,
    ) -> None:
        super().__init__()
        if not ace_weight >= 0:
            raise ValueError(f"ace_weight must be >= 0, got {ace_weight}.")
        self.base = base
        self.ace = ace
        self.ace_weight = float(ace_weight)
        self.regions = bool(regions)
        self.ignore_label = ignore_label
        self.has_ignore_channel = bool(has_ignore_channel)

    def ace_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mL1-ACE of ``logits`` ``[B, C, *spatial]`` against nnU-Net's ``target``, leaving out
        ignored voxels; averaged over images and channels."""
        if self.regions:
            probs = torch.sigmoid(logits.float())
            if self.has_ignore_channel:
                keep = target[:, -1:] == 0
                onehot = target[:, :-1].to(probs.dtype)
            else:
                keep = None
                onehot = target.to(probs.dtype)
        else:
            probs = torch.softmax(logits.float(), 1)
            labels = target.long()
            if self.ignore_label is not None:
                keep = labels != self.ignore_label
                labels = torch.where(keep, labels, torch.zeros_like(labels))
            else:
                keep = None
            onehot = torch.zeros_like(probs).scatter_(1, labels, 1.0)
        if keep is None:
            return self.ace(probs, onehot)
        # per image, only its kept voxels ([1, C, N]); binning ignores the spatial layout
        terms = []
        for b in range(probs.shape[0]):
            k = keep[b, 0]
            if not bool(k.any()):
                continue
            terms.append(self.ace(probs[b][:, k][None], onehot[b][:, k][None]))
        if not terms:
            return probs.sum() * 0.0
        return torch.stack(terms).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one resolution."""
        loss = self.base(logits, target)
        if self.ace_weight == 0:
            return loss
        return loss + self.ace_weight * self.ace_term(logits, target)
