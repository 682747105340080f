"""Fixtures: a tiny synthetic dataset, a tiny bundle and one 2-epoch run (session-wide)."""

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    from calibseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(str(root), n_cases=5, n_raters=2, shape=(16, 16, 16), seed=0)
    return str(root)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, synth_root, tiny_overrides) -> str:
    from calibseg.bundles import create_bundle

    out = tmp_path_factory.mktemp("bundles")
    return create_bundle(
        "synthetic",
        "hardl1ace_dice_ce",
        out=str(out),
        data_root=synth_root,
        overrides=tiny_overrides,
    )


@pytest.fixture(scope="session")
def trained(tiny_bundle) -> str:
    """Run folder of a 2-epoch training (seed 0) of the tiny bundle."""
    from calibseg.bundles.runner import train

    return train(tiny_bundle, seed=0)
