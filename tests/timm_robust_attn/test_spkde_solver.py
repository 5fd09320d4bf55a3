"""SPKDE's weights solve its simplex QP, checked against scipy's SLSQP as an independent solver."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_robust_attn import SPKDEAttention
from timm_robust_attn.functional import key_value_grams, spkde_weights

optimize = pytest.importorskip("scipy.optimize")


def slsqp_simplex_qp(gram: np.ndarray, contamination: float) -> np.ndarray:
    """argmin over the simplex of 0.5 a^T G a - t^T G a, t = 1 / (N (1 - eps)), by scipy's SLSQP."""
    n = gram.shape[0]
    target = np.full(n, 1 / (n * (1 - contamination)))
    result = optimize.minimize(
        lambda a: 0.5 * a @ gram @ a - target @ gram @ a, np.full(n, 1 / n),
        jac=lambda a: gram @ (a - target), method="SLSQP", bounds=[(0, 1)] * n,
        options={"ftol": 1e-15, "maxiter": 1000},
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1, "jac": lambda a: np.ones(n)}])
    assert result.success, result.message
    return result.x


def vit_like_keys_values(tokens: int, dim: int = 64, heads: int = 2, value_scale: float = 0.3):
    k = F.normalize(torch.randn(1, heads, tokens, dim) + 0.5 * torch.randn(1, heads, 1, dim), dim=-1)
    v = torch.randn(1, heads, tokens, dim) * value_scale
    return k, v


@pytest.mark.parametrize("tokens", [50, pytest.param(197, marks=pytest.mark.slow)])
def test_default_spkde_module_weights_are_within_0_01_l1_of_slsqp(tokens):
    torch.manual_seed(tokens)
    module = SPKDEAttention(128, num_heads=2)
    k, v = vit_like_keys_values(tokens)
    weight_num, weight_den = module.key_weights(k, v, torch.ones(1, 2, tokens, dtype=torch.bool))
    gram_k, gram_kv = key_value_grams(k, v, module.bandwidth)
    for weights, gram in ((weight_num, gram_kv), (weight_den, gram_k)):
        for h in range(2):
            reference = slsqp_simplex_qp(gram[0, h].double().numpy(), module.contamination)
            assert np.abs(weights[0, h].double().numpy() - reference).sum() < 0.01


def test_spkde_with_masked_keys_matches_slsqp_on_the_valid_keys():
    torch.manual_seed(1)
    k, v = vit_like_keys_values(30, heads=1)
    valid = torch.arange(30) < 21
    gram_k, _ = key_value_grams(k, v, 8.0)
    w = spkde_weights(gram_k, 0.2, steps=1000, valid=valid.expand(1, 1, -1))
    assert torch.all(w[..., ~valid] == 0)
    reference = slsqp_simplex_qp(gram_k[0, 0, :21, :21].double().numpy(), 0.2)
    assert np.abs(w[0, 0, :21].double().numpy() - reference).sum() < 0.01


def test_projected_gradient_phase_alone_stops_at_its_tolerance():
    """Without the exact phase the iterate's gradient mapping is at most ``tol`` (or ``steps`` ran out)."""
    torch.manual_seed(2)
    k, v = vit_like_keys_values(40, heads=1)
    gram = key_value_grams(k, v, 8.0)[0].double()
    loose = spkde_weights(gram, 0.1, steps=5000, tol=1e-2, rounds=0)
    tight = spkde_weights(gram, 0.1, steps=5000, tol=1e-5, rounds=0)
    exact = torch.from_numpy(slsqp_simplex_qp(gram[0, 0].numpy(), 0.1))
    assert (tight[0, 0] - exact).abs().sum() < (loose[0, 0] - exact).abs().sum()
    assert (tight[0, 0] - exact).abs().sum() < 0.01


def test_gradient_through_the_exact_solve_matches_finite_differences():
    torch.manual_seed(3)
    x = F.normalize(torch.randn(12, 5, dtype=torch.double), dim=-1)
    x[4] = -x[4]
    direction = torch.randn(12, 5, dtype=torch.double)
    probe = torch.randn(12, dtype=torch.double)

    def loss(t: float | torch.Tensor) -> torch.Tensor:
        y = x + t * direction
        gram = torch.exp(-torch.cdist(y, y).pow(2) / 0.5)
        return spkde_weights(gram, 0.2, steps=2000) @ probe

    t = torch.zeros((), dtype=torch.double, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(t), t)
    h = 1e-6
    finite = (loss(h) - loss(-h)) / (2 * h)
    torch.testing.assert_close(grad, finite.detach(), rtol=1e-4, atol=1e-7)
    assert math.isfinite(float(grad)) and abs(float(grad)) > 1e-4
