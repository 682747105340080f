import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from calibseg.binning import compute_bin_stats
from calibseg.metrics import multirater as mr


def _onehot(lab, c):
    return torch.nn.functional.one_hot(lab.long(), c).movedim(-1, 0).float()


@pytest.fixture
def raters():
    """3 raters on a 6×6×4 grid, 3 classes. Class 1 cube (2:4)³ agreed by all; rater 2 adds a
    slab; class 2 voxel only rater 3 draws."""
    lab = torch.zeros(3, 6, 6, 4, dtype=torch.long)
    lab[:, 2:4, 2:4, 1:3] = 1
    lab[1, 4, 2:4, 1:3] = 1
    lab[2, 0, 0, 0] = 2
    return lab


def test_reference_masks(raters):
    ref = mr.reference_masks(raters, 3)
    assert int(ref["consensus_fg"][1].sum()) == 8
    assert int(ref["dissensus"][1].sum()) == 4
    assert int(ref["consensus_fg"][2].sum()) == 0 and int(ref["dissensus"][2].sum()) == 1
    assert torch.equal(
        ref["consensus_fg"] | ref["consensus_bg"] | ref["dissensus"],
        torch.ones(3, 6, 6, 4, dtype=torch.bool),
    )
    assert int(ref["majority"].eq(1).sum()) == 8 and int(ref["majority"].eq(2).sum()) == 0
    assert ref["soft"][1, 4, 2, 1].item() == pytest.approx(1 / 3)
    assert ref["variance"][1, 4, 2, 1].item() == pytest.approx(2 / 9)
    assert torch.allclose(ref["soft"].sum(0), torch.ones(6, 6, 4, dtype=torch.float64))


def test_consensus_dice_removes_dissensus_and_empty_is_one(raters):
    ref = mr.reference_masks(raters, 3)
    # prediction = rater 2 (the larger one): its extra slab lies in the dissensus → Dice 1
    pred = _onehot(raters[1], 3).bool()
    d = mr.consensus_dice(pred, ref["consensus_fg"], ref["dissensus"])
    assert d[1].item() == pytest.approx(1.0)
    assert d[2].item() == pytest.approx(1.0)  # empty vs empty (the class-2 voxel is dissensus)
    # half of the consensus cube predicted: 2·4/(4+8)
    half = torch.zeros(6, 6, 4, dtype=torch.long)
    half[2:3, 2:4, 1:3] = 1
    d = mr.consensus_dice(_onehot(half, 3).bool(), ref["consensus_fg"], ref["dissensus"])
    assert d[1].item() == pytest.approx(8 / 12)
    # swapped labels: class 1 predicted as 2 → both Dice 0
    swapped = torch.where(raters[0] == 1, 2, 0)
    d = mr.consensus_dice(_onehot(swapped, 3).bool(), ref["consensus_fg"], ref["dissensus"])
    assert d[1].item() == 0.0 and d[2].item() == 0.0


def test_curvas_confidence(raters):
    ref = mr.reference_masks(raters, 3)
    prob = torch.zeros(3, 6, 6, 4)
    prob[0] = 1.0
    prob[:, 2:4, 2:4, 1:3] = torch.tensor([0.2, 0.8, 0.0]).view(3, 1, 1, 1)
    conf = mr.curvas_confidence(prob, ref["consensus_fg"], ref["consensus_bg"])
    # class 1: mean p on fg 0.8, on bg 0 → (0.8 + 1)/2; class 2: fg empty → 1 − 0 = 1
    assert conf[1].item() == pytest.approx(0.9)
    assert conf[2].item() == pytest.approx(1.0)
    assert conf[0].item() == pytest.approx(0.5 * (1.0 + 1 - 0.2))


def test_calibration_per_rater_perfect_and_hand_computed(raters):
    perfect = _onehot(raters[0], 3)
    err = mr.calibration_per_rater(perfect, raters, num_bins=10)
    assert err["ece"].shape == (3, 3)
    assert torch.allclose(err["ece"][0], torch.zeros(3, dtype=torch.float64))
    # rater 2 differs on 4 of 144 voxels for classes 0 and 1 (predicted 0 where it says 1)
    assert err["ece"][1, 1].item() == pytest.approx(4 / 144)
    # constant prediction 0.5 vs rater 1 for class 1 (8 of 144 positives): one bin, |0.5 − 8/144|
    half = torch.full((3, 6, 6, 4), 0.5)
    e = mr.calibration_per_rater(half, raters[:1], num_bins=20)["ece"][0, 1].item()
    assert e == pytest.approx(0.5 - 8 / 144)


def test_top_label_ece_matches_kernel_on_flat_tensors(raters):
    g = torch.Generator().manual_seed(0)
    prob = torch.softmax(torch.randn(3, 6, 6, 4, generator=g) * 3, 0)
    top = mr.top_label_calibration(prob, raters, num_bins=50)
    conf = prob.amax(0).reshape(1, 1, -1)
    correct = (prob.argmax(0) == raters[2]).float().reshape(1, 1, -1)
    ref = compute_bin_stats(conf, correct, num_bins=50).errors()["ece"][0, 0]
    assert top["ece"][2].item() == pytest.approx(ref.item())
    # hand check: 2 voxels at confidence 0.9, one right → gap 0.4, all in one bin
    p = torch.tensor([[0.9, 0.9], [0.1, 0.1]]).view(2, 2, 1, 1)
    lab = torch.tensor([0, 1]).view(1, 2, 1, 1)
    assert mr.top_label_calibration(p, lab)["ece"][0].item() == pytest.approx(0.4)


def test_regions():
    img = torch.full((6, 6, 4), -1000.0)
    img[1:4, 2:5, 1:3] = 40.0
    body = mr.region_mask("body", (6, 6, 4), image=img)
    assert int(body.sum()) == 3 * 3 * 2 and bool(body[1, 2, 1]) and not bool(body[0, 0, 0])
    lab = torch.zeros(2, 6, 6, 4, dtype=torch.long)
    lab[0, 3, 3, 2] = 1
    dil = mr.region_mask("dilated", (6, 6, 4), labels=lab, dilation=1)
    assert int(dil.sum()) == 7  # voxel + its 6 face neighbours
    assert bool(mr.region_mask("whole", (2, 2, 2)).all())
    with pytest.raises(ValueError, match="unknown region"):
        mr.region_mask("torso", (2, 2, 2))
    with pytest.raises(ValueError, match="needs the image"):
        mr.region_mask("body", (2, 2, 2))


def test_crps_closed_form_against_numerical_integral():
    mu, sigma = 10.0, 2.0
    for x in (10.0, 11.3, 4.0, 10.0 + 5 * sigma):
        num, _ = integrate.quad(
            lambda v, x=x: (norm.cdf(v, mu, sigma) - (v >= x)) ** 2, -60, 80, points=[x], limit=200
        )
        assert float(mr.crps_gaussian(x, mu, sigma)) == pytest.approx(num, rel=1e-6, abs=1e-8)
    assert float(mr.crps_gaussian(7.0, 3.0, 0.0)) == pytest.approx(4.0)
    # far beyond 3σ the closed form grows like |x − μ| − σ/√π
    x = mu + 8 * sigma
    assert float(mr.crps_gaussian(x, mu, sigma)) == pytest.approx(
        8 * sigma - sigma / math.sqrt(math.pi), rel=1e-6
    )


def test_crps_truncated_saturates_beyond_range():
    mu, sigma = 10.0, 2.0
    sat, _ = integrate.quad(lambda z: norm.cdf(z) ** 2, -3, 3)
    for x in (mu + 3.5 * sigma, mu + 50 * sigma):
        assert float(mr.crps_gaussian_truncated(x, mu, sigma)) == pytest.approx(
            sigma * sat, rel=1e-5
        )
    inside = float(mr.crps_gaussian_truncated(mu, mu, sigma))
    assert inside == pytest.approx(float(mr.crps_gaussian(mu, mu, sigma)), rel=1e-2)
    assert math.isnan(float(mr.crps_gaussian_truncated(1.0, 1.0, 0.0)))


def test_volume_crps_anisotropic_spacing():
    # raters: 8, 10, 12 voxels of class 1; spacing 2×2×2.5 mm → 10 mm³ = 0.01 mL per voxel
    lab = torch.zeros(3, 4, 4, 4, dtype=torch.long)
    for k, n in enumerate((8, 10, 12)):
        lab[k].view(-1)[:n] = 1
    prob = torch.zeros(2, 4, 4, 4)
    prob[1].view(-1)[:10] = 1.0
    prob[0] = 1 - prob[1]
    out = mr.volume_crps(prob, lab, (2.0, 2.0, 2.5))
    mu, sd = 0.10, np.std([0.08, 0.10, 0.12])
    assert out["volume_pred_ml"][1] == pytest.approx(0.10)
    assert out["volume_raters_mean_ml"][1] == pytest.approx(mu)
    assert out["volume_raters_std_ml"][1] == pytest.approx(sd)
    assert out["crps_volume"][1] == pytest.approx(sd * (2 * norm.pdf(0) - 1 / math.sqrt(math.pi)))
    # shifted beyond 3σ in volume: the prediction doubles the volume
    prob[1].view(-1)[:20] = 1.0
    prob[0] = 1 - prob[1]
    far = mr.volume_crps(prob, lab, (2.0, 2.0, 2.5))
    assert (0.2 - mu) / sd > 3
    assert far["crps_volume"][1] == pytest.approx(float(mr.crps_gaussian(0.2, mu, sd)))
    assert far["crps_volume"][1] > 0.1 - sd / math.sqrt(math.pi) - 1e-9
    # identical raters (σ = 0): CRPS = |x − μ| and the truncated variant is NaN
    same = mr.volume_crps(prob, lab[:1].expand(3, -1, -1, -1), (2.0, 2.0, 2.5))
    assert same["crps_volume"][1] == pytest.approx(0.2 - 0.08)
    assert math.isnan(same["crps_volume_trunc3sigma"][1])


def test_surface_distances_anisotropic_against_monai_and_empty():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    gt = torch.zeros(1, 2, 8, 8, 8)
    gt[0, 1, 2:5, 2:5, 2:5] = 1
    pred = torch.zeros(2, 8, 8, 8)
    pred[1, 3:6, 2:5, 2:5] = 1  # shifted one voxel along x (2.5 mm)
    sp = (2.5, 1.0, 1.0)
    out = mr.surface_distances(pred, gt, sp)
    assert out["hd95"][0, 1].item() == pytest.approx(2.5)
    ref = compute_hausdorff_distance(pred[None, 1:], gt[:, 1:], percentile=95, spacing=list(sp))
    assert out["hd95"][0, 1].item() == pytest.approx(ref.item())
    ref = compute_average_surface_distance(
        pred[None, 1:], gt[:, 1:], symmetric=True, spacing=list(sp)
    )
    assert out["assd"][0, 1].item() == pytest.approx(ref.item(), rel=1e-6)
    assert 0 < out["assd"][0, 1].item() < 2.5
    # an irregular pair against MONAI, both metrics
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(1, 1, 10, 9, 8, generator=g) > 0.6).float()
    b = (torch.rand(1, 1, 10, 9, 8, generator=g) > 0.5).float()
    res = mr.surface_distances(a[0], b, (0.7, 1.3, 2.0))
    ref_hd = compute_hausdorff_distance(a, b, percentile=95, spacing=[0.7, 1.3, 2.0])
    ref_asd = compute_average_surface_distance(a, b, symmetric=True, spacing=[0.7, 1.3, 2.0])
    assert res["hd95"][0, 0].item() == pytest.approx(ref_hd.item(), rel=1e-5)
    assert res["assd"][0, 0].item() == pytest.approx(ref_asd.item(), rel=1e-5)
    # class 0 empty in both → 0; one empty → the image diagonal in mm
    assert out["hd95"][0, 0].item() == 0.0 and out["assd"][0, 0].item() == 0.0
    empty_pred = torch.zeros(2, 8, 8, 8)
    out = mr.surface_distances(empty_pred, gt, sp)
    diag = math.sqrt((7 * 2.5) ** 2 + 7**2 + 7**2)
    assert out["hd95"][0, 1].item() == pytest.approx(diag)
    assert out["assd"][0, 1].item() == pytest.approx(diag)


def test_pairwise_dice_and_fleiss_kappa(raters):
    pairs = mr.pairwise_rater_dice(raters, 3)
    assert set(pairs) == {(0, 1), (0, 2), (1, 2)}
    assert pairs[(0, 1)][1].item() == pytest.approx(2 * 8 / (8 + 12))
    assert pairs[(0, 2)][2].item() == 0.0  # empty vs one voxel
    # Fleiss (1971) example as tabulated on Wikipedia: 10 subjects, 14 raters, κ ≈ 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert mr.fleiss_kappa_from_counts(table) == pytest.approx(0.20993, abs=1e-4)
    # labels version equals the counts version
    oh = torch.nn.functional.one_hot(raters, 3).sum(0).reshape(-1, 3).numpy()
    assert mr.fleiss_kappa(raters, 3) == pytest.approx(mr.fleiss_kappa_from_counts(oh))
    # hand: 2 items, 2 raters, one agreement on cat 0, one disagreement → P̄ = 1/2,
    # p = (3/4, 1/4), Pe = 10/16 → κ = (1/2 − 5/8)/(3/8) = −1/3
    assert mr.fleiss_kappa_from_counts([[2, 0], [1, 1]]) == pytest.approx(-1 / 3)
    same = raters[:1].expand(3, -1, -1, -1)
    assert mr.fleiss_kappa(same, 3) == pytest.approx(1.0)
    assert math.isnan(mr.fleiss_kappa(torch.zeros(3, 2, 2, 2, dtype=torch.long), 3))


def test_ncc_identical_raters_is_nan_without_crash(raters):
    same = raters[:1].expand(3, -1, -1, -1)
    var = mr.reference_masks(same, 3)["variance"]
    ncc = mr.uncertainty_variance_ncc(torch.rand(3, 6, 6, 4), var)
    assert torch.isnan(ncc).all()
    var = mr.reference_masks(raters, 3)["variance"]
    assert mr.uncertainty_variance_ncc(var.float(), var)[1].item() == pytest.approx(1.0)


def test_case_metrics_perfect_prediction_and_errors(raters):
    same = raters[:1].expand(3, -1, -1, -1).clone()
    prob = _onehot(same[0], 3)
    rows = mr.case_metrics(prob, same, (1.0, 1.0, 2.0), class_names=["bg", "a", "b"])
    get = {(r["class"], r["rater"], r["metric"]): r["value"] for r in rows}
    assert get[("a", "consensus", "dice_consensus")] == 1.0
    assert get[("a", "consensus", "confidence")] == 1.0
    assert get[("a", "1", "hd95")] == 0.0
    assert get[("a", "all", "crps_volume")] == 0.0
    assert get[("a", "2", "ece")] == 0.0
    assert get[("all", "3", "ece_toplabel")] == 0.0
    assert get[("all", "consensus", "error_rate")] == 0.0
    assert math.isnan(get[("a", "all", "ncc_variance")])  # identical raters: no variance
    assert get[("all", "all", "fleiss_kappa")] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="label"):
        mr.case_metrics(prob, same + 5, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="grid"):
        mr.case_metrics(prob, same[:, :3], (1.0, 1.0, 1.0))


def test_fleiss_kappa_tiny_foreground_is_finite_and_exact():
    # a small lesion in a large CT: N items, 3 raters; N − 5 all background, 4 all foreground,
    # 1 split 1 bg / 2 fg. By hand: 1 − P̄ = (2/3)/N, p_fg = 14/(3N), 1 − Pe = 2 p (1 − p), so
    # κ = 1 − (1/(3N)) / (p (1 − p)) = 1 − 3N / (14 (3N − 14)).
    n_items = 2_000_000
    counts = np.zeros((n_items, 2))
    counts[:, 0] = 3
    counts[:4] = [0, 3]
    counts[4] = [1, 2]
    expected = 1 - Fraction(3 * n_items, 14 * (3 * n_items - 14))
    assert mr.fleiss_kappa_from_counts(counts) == pytest.approx(float(expected), rel=1e-9)


def test_case_metrics_fleiss_kappa_follows_the_region():
    # 2 raters on a 4×1×1 strip: they agree on voxels 0, 1 (labels 0 and 1) and disagree on
    # voxels 2, 3. Whole image: P̄ = 1/2, p = (1/2, 1/2) → κ = 0. Region {0, 1}: perfect → 1.
    labels = torch.tensor([[0, 1, 0, 1], [0, 1, 1, 0]]).view(2, 4, 1, 1)
    prob = _onehot(labels[0], 2)
    region = torch.tensor([True, True, False, False]).view(4, 1, 1)
    whole = mr.case_metrics(prob, labels, (1.0, 1.0, 1.0))
    inside = mr.case_metrics(prob, labels, (1.0, 1.0, 1.0), region=region)

    def kappa(rows):
        return next(r["value"] for r in rows if r["metric"] == "fleiss_kappa")

    assert kappa(whole) == pytest.approx(0.0, abs=1e-12)
    assert kappa(inside) == pytest.approx(1.0)
