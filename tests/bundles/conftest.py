"""Fixtures: a tiny synthetic dataset on disk (session-wide, generated once), and bundles whose
network is a stand-in module with a ready checkpoint (prediction without training)."""

import os
import textwrap

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    from calibseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(str(root), n_cases=5, n_raters=2, shape=(16, 16, 16), seed=0)
    return str(root)


@pytest.fixture
def standin_bundle(tmp_path, monkeypatch):
    """``make(dataset, root, module, source, network) -> (bundle, mods)``: a ``baseline_ce``
    bundle of ``dataset`` at ``root`` whose network is ``network`` (a ``network_def`` config)
    from the module ``<module>.py`` written from ``source`` into ``mods`` (importable here and,
    through ``PYTHONPATH=<mods>``, in a subprocess; a name per test, as Python caches modules),
    with roi 16³ and an empty ``standin/checkpoints/best.pt`` of this bundle."""

    def make(dataset: str, root, module: str, source: str, network: dict):
        import torch

        from calibseg.bundles import bundle_hash, create_bundle

        mods = tmp_path / "mods"
        mods.mkdir()
        (mods / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(mods))
        overrides = {"common#roi_size": [16, 16, 16], "common#network_def": network}
        bundle = create_bundle(
            dataset,
            "baseline_ce",
            out=str(tmp_path / "bundles"),
            data_root=str(root),
            overrides=overrides,
        )
        ckpt = os.path.join(bundle, "standin", "checkpoints", "best.pt")
        os.makedirs(os.path.dirname(ckpt))
        torch.save({"model": {}, "bundle_hash": bundle_hash(bundle)}, ckpt)
        return bundle, mods

    return make
