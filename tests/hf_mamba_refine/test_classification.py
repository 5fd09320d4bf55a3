"""MambaForSequenceClassification: pooling, Auto registration, persistence."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import hf_mamba_refine  # noqa: F401  (registers the Auto class)
from hf_mamba_refine import MambaForSequenceClassification

from .conftest import tiny_config


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_ignores_padding(pooling: str, tokens) -> None:
    model = MambaForSequenceClassification(tiny_config(num_labels=3, classifier_pooling=pooling)).eval()
    hidden = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = model.pool(hidden, mask)
    expected = hidden[0, :3].mean(0) if pooling == "mean" else hidden[0, 2]
    torch.testing.assert_close(pooled[0], expected)
    torch.testing.assert_close(pooled[1], hidden[1].mean(0) if pooling == "mean" else hidden[1, -1])


def test_forward_loss_and_auto_registration(tmp_path, tokens) -> None:
    config = tiny_config(num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config)
    assert isinstance(model, MambaForSequenceClassification)
    labels = torch.tensor([0, 2])
    out = model(tokens, labels=labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_bad_pooling_is_rejected() -> None:
    with pytest.raises(ValueError, match="classifier_pooling"):
        MambaForSequenceClassification(tiny_config(classifier_pooling="max"))
