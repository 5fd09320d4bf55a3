"""Shared fixtures of the nfn_ext tests."""

import pytest

from nfn_ext.transformer_zoo import build_transformer_zoo


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A 3-member transformer zoo, built once per test module."""
    out = tmp_path_factory.mktemp("zoo") / "vit"
    build_transformer_zoo(out, n=3, progress=False)
    return out
