"""Mechanism probe: the mL1-ACE term per deep-supervision level and per bin weight.

For a trained model of a bundle, on whole training volumes (no augmentation) and on 32³ crops,
print for every deep-supervision level: voxels per image, voxels in the non-empty bins, the value
of DiceCE / hard ACE / soft ACE (exact membership gradient and fixed split) and the RMS over
voxels of the gradient with respect to the logits, relative to DiceCE's. Then, at full
resolution, the mean |∂ soft ACE / ∂p| of voxels grouped by the weight of their bin.

Usage: python experiments/probe_ace_levels.py BUNDLE [--seed S] [--checkpoint best] [--cases 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from calibseg.binning import compute_bin_stats
from calibseg.bundles import load_bundle, read_splits
from calibseg.bundles.runner import _checkpoint_path, load_checkpoint, run_dir
from calibseg.data import get_dataset
from calibseg.losses import HardL1ACELoss, SoftL1ACELoss

LOSSES = {
    "DiceCE": lambda: DiceCELoss(softmax=True),
    "hard ACE": lambda: HardL1ACELoss(softmax=True),
    "soft ACE": lambda: SoftL1ACELoss(softmax=True),
    "soft ACE, fixed split": lambda: SoftL1ACELoss(softmax=True, membership_grad=False),
}


def _grad_rms(loss_fn, z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    z = z.detach().clone().requires_grad_()
    value = loss_fn(z, y)
    (g,) = torch.autograd.grad(value, z)
    per_voxel = g.pow(2).sum(1).sqrt()  # L2 over channels, one number per voxel
    return float(value), float(per_voxel.pow(2).mean().sqrt())


def probe(outputs: list[torch.Tensor], y: torch.Tensor, label: str) -> None:
    print(f"\n## {label}: batch {tuple(y.shape)}")
    print(
        "| level | voxels/image | median voxels per non-empty bin | bins < 10 voxels | "
        + " | ".join(f"{n} value (grad RMS, × DiceCE)" for n in LOSSES)
        + " |"
    )
    print("|" + "---|" * (4 + len(LOSSES)))
    for level, z in enumerate(outputs):
        t = F.interpolate(y, size=z.shape[2:], mode="nearest-exact")
        p = torch.softmax(z.float(), 1)
        stats = compute_bin_stats(p, t, num_bins=20)
        w = stats.weight.numpy().ravel()
        nz = w[w > 0]
        cells = []
        base = None
        for make in LOSSES.values():
            value, rms = _grad_rms(make(), z.float(), t)
            base = rms if base is None else base
            cells.append(f"{value:.3f} ({rms:.2e}, {rms / base:.1f}×)")
        print(
            f"| {level} | {int(np.prod(z.shape[2:]))} | {int(np.median(nz))} | "
            f"{(nz < 10).mean():.0%} | " + " | ".join(cells) + " |"
        )


def by_bin_weight(z: torch.Tensor, y: torch.Tensor) -> None:
    """Mean |∂L/∂p| per voxel grouped by the voxel's bin weight (full resolution)."""
    p = torch.softmax(z.float(), 1).detach()
    stats = compute_bin_stats(p, y, num_bins=20)
    b, c = p.shape[:2]
    idx = torch.clamp((p * 20).long(), max=19)  # the voxel's bin (equal-width, 20 bins)
    weight = stats.weight.view(b, c, 20).gather(2, idx.flatten(2)).view_as(p).double()
    edges = [1, 10, 100, 1_000, 10_000, 10**9]
    print("\n## |∂ loss / ∂p| per voxel by the weight of its bin (full resolution)")
    print("| bin weight | voxels | " + " | ".join(n for n in LOSSES if n != "DiceCE") + " |")
    print("|---|---|" + "---|" * (len(LOSSES) - 1))
    grads = {}
    for name, make in LOSSES.items():
        if name == "DiceCE":
            continue
        q = p.clone().requires_grad_()
        loss_fn = make()
        loss_fn.softmax = False
        (g,) = torch.autograd.grad(loss_fn(q, y), q)
        grads[name] = g.abs().double()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (weight >= lo) & (weight < hi)
        if int(m.sum()) == 0:
            continue
        cells = " | ".join(f"{float(grads[n][m].mean()):.2e}" for n in grads)
        print(f"| {lo}–{hi if hi < 10**9 else '∞'} | {int(m.sum())} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--cases", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    parser = load_bundle(a.bundle)
    net = parser.get_parsed_content("network")
    state = load_checkpoint(_checkpoint_path(run_dir(a.bundle, a.seed), a.checkpoint), a.bundle)
    net.load_state_dict(state["model"])
    net.train()  # deep-supervision heads are returned in training mode (instance norm: no state)
    spec = get_dataset(parser.get("dataset"))
    tf = spec.transforms("val", tuple(parser.get("roi_size")))
    items = read_splits(a.bundle)["training"][: a.cases]
    data = [tf(dict(it)) for it in items]
    x = torch.stack([torch.as_tensor(d["image"]) for d in data])
    lab = torch.stack([torch.as_tensor(d["label"]) for d in data]).long()
    y = F.one_hot(lab[:, 0], int(parser.get("num_classes"))).movedim(-1, 1).float()
    print(f"model: {a.bundle} seed {a.seed} {a.checkpoint} (epoch {state.get('epoch')})")
    with torch.no_grad():
        outs = net(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    probe(list(outs), y, f"whole volumes {tuple(x.shape[2:])}")
    by_bin_weight(outs[0], y)
    s = [(n - 32) // 2 for n in x.shape[2:]]
    xc = x[:, :, s[0] : s[0] + 32, s[1] : s[1] + 32, s[2] : s[2] + 32]
    yc = y[:, :, s[0] : s[0] + 32, s[1] : s[1] + 32, s[2] : s[2] + 32]
    with torch.no_grad():
        outs = net(xc)
    probe(list(outs) if isinstance(outs, (list, tuple)) else [outs], yc, "central 32³ crops")


if __name__ == "__main__":
    main()
