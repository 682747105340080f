"""Multi-rater ensembles: train/predict members, combine their predictions (streaming) and
write uncertainty maps (entropy, aleatoric, epistemic, 1 − max p, variance; nats)."""

from calibseg.ensemble.combine import OUTPUT_SUFFIXES, combine_case, combine_members, match_cases
from calibseg.ensemble.io import list_cases, prediction_folder, read_label, read_probabilities
from calibseg.ensemble.members import (
    discover_members,
    group_members,
    member_name,
    member_plan,
    parse_raters,
    parse_seeds,
    predict_members,
    train_members,
)

__all__ = [
    "OUTPUT_SUFFIXES",
    "combine_case",
    "combine_members",
    "discover_members",
    "group_members",
    "list_cases",
    "match_cases",
    "member_name",
    "member_plan",
    "parse_raters",
    "parse_seeds",
    "predict_members",
    "prediction_folder",
    "read_label",
    "read_probabilities",
    "train_members",
]
