"""The distribution installs, each plugin imports, and the pinned host libraries are the supported ones."""

import importlib

import pytest
import timm
import torch
import torch_geometric
import torchvision
import transformers
from packaging.version import Version


@pytest.mark.parametrize("name", ["pyg_clifford", "timm_robust_attn", "hf_mamba_refine", "nfn_ext"])
def test_package_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list)
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ names {public!r} but it is missing"


def test_host_library_versions() -> None:
    assert Version(torch.__version__).base_version == "2.14.1"
    assert Version(torchvision.__version__).base_version == "0.29.1"
    assert Version(timm.__version__) >= Version("1.0.23")
    assert Version(transformers.__version__) >= Version("5")
    assert Version(torch_geometric.__version__) >= Version("2.6")
    from timm.models.vision_transformer import ATTN_LAYERS

    assert "" in ATTN_LAYERS
