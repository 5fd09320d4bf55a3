"""Robustness-study helpers: gradients through the robust weights during attacks, ART attacks, digits-C."""

import pytest
import torch

from timm_robust_attn import RKDEAttention, SPKDEAttention
from timm_robust_attn.robustness import (
    TrainConfig,
    adversarial_accuracy,
    evaluate,
    small_vit,
    weight_gradients,
)


def test_weight_gradients_sets_and_restores_the_flag():
    model = torch.nn.Sequential(RKDEAttention(16, num_heads=2),
                                SPKDEAttention(16, num_heads=2, weight_grad=True))
    with weight_gradients(model):
        assert model[0].weight_grad and model[1].weight_grad
    assert not model[0].weight_grad and model[1].weight_grad
    with weight_gradients(model, enabled=False):
        assert not model[1].weight_grad
    assert model[1].weight_grad


@pytest.mark.parametrize("cls", [RKDEAttention, SPKDEAttention])
def test_input_gradient_under_weight_gradients_is_the_true_derivative(cls):
    """With the robust weights differentiated, the input gradient matches finite differences of the output;
    with them held constant (the training default) it does not: attacks must run under weight_gradients."""
    torch.manual_seed(0)
    module = cls(16, num_heads=2).double().eval()
    with torch.no_grad():
        module.qkv.weight.mul_(10)
    x = torch.randn(1, 10, 16, dtype=torch.double)
    direction = torch.randn_like(x)
    probe = torch.randn(1, 10, 16, dtype=torch.double)

    def objective(t: float) -> float:
        with torch.no_grad():
            return float((module(x + t * direction) * probe).sum())

    h = 1e-6
    finite = (objective(h) - objective(-h)) / (2 * h)

    def analytic() -> float:
        inputs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad((module(inputs) * probe).sum(), inputs)
        return float((grad * direction).sum())

    with weight_gradients(module):
        assert analytic() == pytest.approx(finite, rel=1e-4, abs=1e-7)
    assert analytic() != pytest.approx(finite, rel=1e-3, abs=1e-6)


def test_art_attacks_run_and_never_beat_clean_accuracy():
    pytest.importorskip("art")
    torch.manual_seed(0)
    config = TrainConfig(attn="rkde", img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    model = small_vit(config).eval()
    x, y = torch.rand(12, 1, 16, 16), torch.randint(10, (12,))
    clean = evaluate(model, x, y)
    assert adversarial_accuracy(model, x, y, "pgd", eps=1e-9, iterations=2) == clean
    for attack in ("pgd", "apgd", "square"):
        assert adversarial_accuracy(model, x, y, attack, eps=0.1, iterations=3) <= clean
    assert not model.blocks[0].attn.weight_grad
    with pytest.raises(ValueError, match="attack must be one of"):
        adversarial_accuracy(model, x, y, "fgsm", eps=0.1, iterations=1)


def test_corruptions_keep_shape_and_range_and_are_reproducible():
    pytest.importorskip("imagecorruptions")
    from timm_robust_attn.robustness import corrupt_images

    x = torch.rand(3, 1, 32, 32)
    once = corrupt_images(x, "gaussian_noise", 3, seed=1)
    assert once.shape == x.shape and once.min() >= 0 and once.max() <= 1
    torch.testing.assert_close(once, corrupt_images(x, "gaussian_noise", 3, seed=1))
    assert (once - x).abs().mean() > 0.05
