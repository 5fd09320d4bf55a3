"""Shared test settings: deterministic seeds and a single thread so that timings do not matter."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
