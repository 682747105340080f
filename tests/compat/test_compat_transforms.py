"""`src.transforms` of the mL1-ACE paper's code → `calibseg.transforms`: same calls, same numbers.

Expected region channels are written out by hand from the challenges' label definitions.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from calibseg.transforms import (
    AverageAnnotationsd,
    ConvertToBratsClassesd,
    ConvertToBratsClassesSoftmaxd,
    ConvertToKits23Classesd,
    ConvertToKits23ClassesSoftmaxd,
    RandomWeightedAverageAnnotationsd,
)

# the paper's parameter lists (MapTransform's keys, allow_missing_keys), in its order
PAPER = {
    ConvertToKits23Classesd: ["keys", "allow_missing_keys"],
    ConvertToKits23ClassesSoftmaxd: ["keys", "allow_missing_keys"],
    ConvertToBratsClassesd: ["keys", "allow_missing_keys"],
    ConvertToBratsClassesSoftmaxd: ["keys", "allow_missing_keys"],
    AverageAnnotationsd: ["keys", "output_key", "allow_missing_keys"],
    RandomWeightedAverageAnnotationsd: ["keys", "output_key", "prob", "allow_missing_keys"],
}


@pytest.mark.parametrize("cls", list(PAPER), ids=lambda c: c.__name__)
def test_positional_order_is_the_papers(cls):
    params = list(inspect.signature(cls).parameters.values())
    want = PAPER[cls]
    assert [p.name for p in params[: len(want)]] == want
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(want)])
    if "allow_missing_keys" in want:
        assert inspect.signature(cls).parameters["allow_missing_keys"].default is False


def test_rater_averages_positionally_as_in_the_papers_code():
    # (keys, output_key, allow_missing_keys): a missing rater key is skipped when allowed
    raters = {"r1": torch.tensor([[[0.0, 1.0]]]), "r2": torch.tensor([[[1.0, 1.0]]])}
    out = AverageAnnotationsd(["r1", "r2", "r3"], "soft", True)(raters)["soft"]
    torch.testing.assert_close(out, torch.tensor([[[0.5, 1.0]]]))
    with pytest.raises(KeyError):
        AverageAnnotationsd(["r1", "r2", "r3"], "soft", False)(raters)
    # (keys, output_key, prob, allow_missing_keys)
    w = RandomWeightedAverageAnnotationsd(["r1", "r2"], "soft", 1.0, False)(raters)["soft"]
    assert float(w[0, 0, 1]) == pytest.approx(1.0) and 0.0 <= float(w[0, 0, 0]) <= 1.0


# four voxels [1, 1, 1, 4] holding the labels 0, 1, 2, 3
LABEL = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4)
# a softmax map [4, 1, 1, 2]: voxel 0 (.1, .2, .3, .4), voxel 1 (.7, .1, .1, .1)
PROBS = torch.tensor([[0.1, 0.7], [0.2, 0.1], [0.3, 0.1], [0.4, 0.1]]).view(4, 1, 1, 2)


def test_region_labels_as_in_the_papers_code():
    kits = ConvertToKits23Classesd(keys=["label"])({"label": LABEL})["label"]
    # background, tumour (2), masses (2, 3), kidney and masses (1, 2, 3)
    want = [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1]]
    assert kits.shape == (4, 1, 1, 4)
    assert kits.flatten(1).tolist() == want
    brats = ConvertToBratsClassesd(keys=["label"])({"label": LABEL})["label"]
    # background, ET (3), TC (1, 3), WT (1, 2, 3)
    assert brats.flatten(1).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]


def test_region_softmax_of_a_tensor_and_of_deep_supervision_lists():
    kits_want = torch.tensor([[0.1, 0.7], [0.3, 0.1], [0.7, 0.2], [0.9, 0.3]]).view(4, 1, 1, 2)
    brats_want = torch.tensor([[0.1, 0.7], [0.4, 0.1], [0.6, 0.2], [0.9, 0.3]]).view(4, 1, 1, 2)
    for cls, want in (
        (ConvertToKits23ClassesSoftmaxd, kits_want),
        (ConvertToBratsClassesSoftmaxd, brats_want),
    ):
        torch.testing.assert_close(cls(keys=["pred"])({"pred": PROBS})["pred"], want)
    # SegResNet-style deep supervision: a list of maps, each converted
    heads = ConvertToKits23ClassesSoftmaxd(keys=["pred"])({"pred": [PROBS, PROBS[..., :1]]})
    assert isinstance(heads["pred"], list) and len(heads["pred"]) == 2
    torch.testing.assert_close(heads["pred"][0], kits_want)
    torch.testing.assert_close(heads["pred"][1], kits_want[..., :1])


def test_rater_averages_with_the_papers_arguments():
    raters = {
        "label_1": torch.tensor([[[0.0, 1.0, 1.0]]]),
        "label_2": torch.tensor([[[0.0, 0.0, 1.0]]]),
        "label_3": torch.tensor([[[1.0, 0.0, 1.0]]]),
    }
    keys = ["label_1", "label_2", "label_3"]
    out = AverageAnnotationsd(keys=keys, output_key="label")(raters)["label"]
    torch.testing.assert_close(out, torch.tensor([[[1 / 3, 1 / 3, 1.0]]]))
    t = RandomWeightedAverageAnnotationsd(keys=keys, output_key="label", prob=1.0)
    t.set_random_state(seed=0)
    w = t(raters)["label"]
    # a convex combination: voxel 2 (all raters 1) stays 1, the others lie in [0, 1]
    assert w.shape == (1, 1, 3)
    assert float(w[0, 0, 2]) == pytest.approx(1.0)
    assert bool(((w >= 0) & (w <= 1)).all())
    # class indices need num_classes (averaging the index values is meaningless)
    indices = {"a": torch.tensor([[[0, 2]]]), "b": torch.tensor([[[1, 2]]])}
    with pytest.raises(ValueError, match="num_classes"):
        AverageAnnotationsd(keys=["a", "b"], output_key="label")(indices)
    soft = AverageAnnotationsd(keys=["a", "b"], output_key="label", num_classes=3)(indices)
    torch.testing.assert_close(
        soft["label"], torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 1.0]]).view(3, 1, 2)
    )
