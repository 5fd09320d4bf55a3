"""Tiny Mamba configurations shared by the hf_mamba_refine tests."""

import pytest
import torch
from transformers import MambaConfig


def tiny_config(**overrides) -> MambaConfig:
    """A two-layer Mamba small enough for CPU tests (I = 32 >= N = 4)."""
    values = dict(vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2, pad_token_id=0)
    values.update(overrides)
    return MambaConfig(**values)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(1, 40, (2, 12), generator=torch.Generator().manual_seed(1))
