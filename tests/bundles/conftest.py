"""Fixtures: a tiny synthetic dataset on disk (session-wide, generated once)."""

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    from calibseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(str(root), n_cases=5, n_raters=2, shape=(16, 16, 16), seed=0)
    return str(root)
