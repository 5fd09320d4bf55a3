"""Functional core: KIRWLS residuals and weights, simplex projection, SPKDE, the attention estimators."""

import math

import pytest
import torch
import torch.nn.functional as F

from timm_robust_attn.functional import (
    block_assignment,
    gaussian_gram,
    kde_attention,
    key_value_grams,
    kirwls_key_value_weights,
    kirwls_weights,
    mom_attention,
    project_simplex,
    psi_over_r,
    spkde_weights,
    unit_norm,
    weighted_kde_attention,
)


def direct_weighted_kde(q, k, v, w_num, w_den, bandwidth, allowed=None):
    """h_i = sum_j w_num_j k(q_i, k_j) v_j / sum_j w_den_j k(q_i, k_j), computed from distances in float64."""
    q, k, v = q.double(), k.double(), v.double()
    kern = torch.exp(-torch.cdist(q, k).pow(2) / bandwidth)
    if allowed is not None:
        kern = kern * allowed
    num = (kern * w_num.double().unsqueeze(-2)) @ v
    den = (kern * w_den.double().unsqueeze(-2)).sum(-1, keepdim=True)
    return num / den


def qkv(batch=2, heads=3, tokens=9, dim=8, scale=1.0):
    q = torch.randn(batch, heads, tokens, dim) * scale
    k = F.normalize(torch.randn(batch, heads, tokens, dim), dim=-1)
    v = torch.randn(batch, heads, tokens, dim)
    return q, k, v


def unit_features(tokens=12, dim=5, outlier=None, spread=0.3):
    x = spread * torch.randn(tokens, dim) + torch.tensor([1.0] + [0.0] * (dim - 1))
    if outlier is not None:
        x[outlier] = torch.tensor([-1.0] + [0.0] * (dim - 1)) + 0.05 * torch.randn(dim)
    return F.normalize(x, dim=-1)


def test_kde_attention_equals_direct_formula():
    q, k, v = qkv()
    bandwidth = math.sqrt(8)
    uniform = torch.full(q.shape[:-1], 1.0)
    expected = direct_weighted_kde(q, k, v, uniform, uniform, bandwidth)
    torch.testing.assert_close(kde_attention(q, k, v, bandwidth).double(), expected, rtol=1e-5, atol=1e-5)


def test_weighted_kde_attention_equals_direct_formula_with_mask():
    q, k, v = qkv()
    w_num = torch.rand(2, 3, 9).softmax(-1)
    w_den = torch.rand(2, 3, 9).softmax(-1)
    allowed = torch.rand(2, 1, 9, 9) > 0.3
    allowed[..., 0] = True
    out = weighted_kde_attention(q, k, v, w_num, w_den, 2.0, attn_mask=allowed)
    expected = direct_weighted_kde(q, k, v, w_num, w_den, 2.0, allowed.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_kirwls_residual_matches_explicit_feature_space():
    """Finite unit-norm features: G = Phi Phi^T, r_j = |Phi_j - sum_l w_l Phi_l| (Kim & Scott's sign)."""
    phi = unit_features(outlier=3).double()
    gram = phi @ phi.T
    threshold = 0.2
    weights = kirwls_weights(gram, iterations=2, loss="huber", threshold=threshold)
    w = torch.full((12,), 1 / 12, dtype=torch.double)
    for _ in range(2):
        r = (phi - w @ phi).norm(dim=-1)
        u = torch.clamp(threshold / r, max=1.0)
        w = u / u.sum()
    torch.testing.assert_close(weights, w, rtol=1e-5, atol=1e-6)


def test_kirwls_zero_iterations_is_uniform_over_valid_keys():
    gram = gaussian_gram(torch.randn(2, 7, 4), 2.0)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    w = kirwls_weights(gram, 0, valid=valid)
    torch.testing.assert_close(w[0], torch.full((7,), 1 / 7))
    torch.testing.assert_close(w[1], torch.tensor([0.2] * 5 + [0.0] * 2))


@pytest.mark.parametrize("loss", ["huber", "hampel"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_outlier_gets_strictly_smaller_kirwls_weight(loss, threshold):
    outlier = int(torch.randint(12, ()))
    phi = unit_features(outlier=outlier)
    w = kirwls_weights(phi @ phi.T, iterations=3, loss=loss, threshold=threshold)
    inliers = torch.cat([w[:outlier], w[outlier + 1:]])
    assert torch.all(w[outlier] < inliers)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("loss", ["huber", "hampel"])
def test_far_key_value_pair_gets_smaller_weight_in_joint_gram(loss):
    k = F.normalize(torch.randn(1, 2, 16, 8) * 0.2 + 1.0, dim=-1)
    v = torch.randn(1, 2, 16, 8) * 0.3
    j = int(torch.randint(16, ()))
    k[..., j, :] = -k[..., j, :]
    v[..., j, :] += 6.0
    gram_k, gram_kv = key_value_grams(k, v, math.sqrt(8))
    for gram in (gram_k, gram_kv):
        w = kirwls_weights(gram, iterations=1, loss=loss)
        others = torch.cat([w[..., :j], w[..., j + 1:]], dim=-1)
        assert torch.all(w[..., j : j + 1] < others)


def test_key_value_gram_is_product_of_grams():
    _, k, v = qkv()
    gram_k, gram_kv = key_value_grams(k, v, 3.0)
    torch.testing.assert_close(gram_k, gaussian_gram(k, 3.0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gram_kv, gaussian_gram(torch.cat([k, v], -1), 3.0), atol=1e-6, rtol=1e-5)


def direct_kirwls_pair(k, v, bandwidth, iterations, loss, threshold, valid):
    """(w^kv, w^k) from explicit Grams of the concatenated / key features in float64."""
    gram_kv = gaussian_gram(torch.cat([k, v], -1).double(), bandwidth)
    gram_k = gaussian_gram(k.double(), bandwidth)
    return tuple(kirwls_weights(g, iterations, loss, threshold, valid) for g in (gram_kv, gram_k))


@pytest.mark.parametrize("loss, threshold", [("huber", None), ("hampel", None), ("huber", 0.3)])
@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 3 * 2 * 9 * 9 * 4, 1 << 20])
def test_kirwls_key_value_weights_match_direct_grams(loss, threshold, iterations, chunk_bytes):
    """Chunked one-iteration path (1 and 3 batch-head rows per chunk: 5 rows leave a ragged last chunk),
    one-buffer path (2 iterations), under a key mask, against explicit float64 Grams."""
    _, k, v = qkv(batch=5, heads=1)
    valid = torch.rand(5, 1, 9) > 0.3
    valid[..., 0] = True
    w_num, w_den = kirwls_key_value_weights(k, v, 3.0, iterations, loss, threshold, valid, chunk_bytes)
    exp_num, exp_den = direct_kirwls_pair(k, v, 3.0, iterations, loss, threshold, valid)
    torch.testing.assert_close(w_num.double(), exp_num, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_den.double(), exp_den, rtol=1e-4, atol=1e-6)
    assert torch.all(w_num[~valid] == 0) and torch.all(w_den[~valid] == 0)


@pytest.mark.parametrize("iterations", [1, 2])
def test_kirwls_key_value_weights_for_keys_that_are_not_unit_norm(iterations):
    """The constant-weight path takes the keys' norms into account, as the differentiable one does."""
    _, k, v = qkv()
    k = 2.5 * k + 0.3
    valid = torch.ones(2, 3, 9, dtype=torch.bool)
    for got, expected in zip(kirwls_key_value_weights(k, v, 3.0, iterations, "huber", None, valid),
                             direct_kirwls_pair(k, v, 3.0, iterations, "huber", None, valid), strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3])
def test_kirwls_key_value_weights_with_gradients_equal_constant_path(iterations):
    _, k, v = qkv()
    valid = torch.ones(2, 3, 9, dtype=torch.bool)
    constant = kirwls_key_value_weights(k, v, 3.0, iterations, "huber", None, valid)
    k.requires_grad_(True)
    with_grad = kirwls_key_value_weights(k, v, 3.0, iterations, "huber", None, valid)
    assert with_grad[0].requires_grad and not constant[0].requires_grad
    for a, b in zip(with_grad, constant, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with_grad[0].sum().backward()
    assert k.grad is not None


def test_kirwls_key_value_weights_in_float64():
    _, k, v = qkv()
    k, v = F.normalize(k.double(), dim=-1), v.double()
    valid = torch.ones(2, 3, 9, dtype=torch.bool)
    w64 = kirwls_key_value_weights(k, v, 3.0, 1, "hampel", None, valid)
    assert w64[0].dtype == torch.float64
    for a, b in zip(w64, direct_kirwls_pair(k, v, 3.0, 1, "hampel", None, valid), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_project_simplex_matches_bisection():
    x = torch.randn(4, 3, 11, dtype=torch.double) * 2
    p = project_simplex(x)
    lo = x.amin(-1, keepdim=True) - 1
    hi = x.amax(-1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = (x - mid).clamp_min(0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    torch.testing.assert_close(p, (x - lo).clamp_min(0))
    torch.testing.assert_close(project_simplex(p), p)


def test_spkde_solves_its_quadratic_program():
    phi = unit_features(tokens=10, outlier=4, spread=0.15).double()
    gram = torch.exp(-torch.cdist(phi, phi).pow(2) / 0.3)
    eps = 0.2
    a = spkde_weights(gram, contamination=eps, steps=3000)
    target = torch.full((10,), 1 / (10 * (1 - eps)), dtype=torch.double)
    grad = gram @ (a - target)
    # KKT on the simplex: gradient is minimal and equal on the support, not smaller off it.
    support = a > 1e-8
    assert torch.isclose(a.sum(), torch.tensor(1.0, dtype=torch.double))
    assert grad[support].max() - grad[support].min() < 1e-6
    assert grad[~support].min() >= grad[support].max() - 1e-6 if (~support).any() else True
    uniform = torch.full((10,), 0.1, dtype=torch.double)
    objective = lambda w: 0.5 * w @ gram @ w - target @ gram @ w  # noqa: E731
    assert objective(a) < objective(uniform) - 1e-3


def test_mom_with_one_block_is_kde():
    q, k, v = qkv()
    blocks = block_assignment(9, 1, q.device, shuffle=False)
    torch.testing.assert_close(mom_attention(q, k, v, blocks, 1, 2.0), kde_attention(q, k, v, 2.0))


def test_mom_attends_within_each_querys_median_block():
    q, k, v = qkv(batch=1, heads=2, tokens=10)
    num_blocks = 3
    blocks = block_assignment(10, num_blocks, q.device, shuffle=True)
    out = mom_attention(q, k, v, blocks, num_blocks, 2.0).double()
    kern = torch.exp(-torch.cdist(q.double(), k.double()).pow(2) / 2.0)
    for h in range(2):
        for i in range(10):
            means = torch.stack([kern[0, h, i, blocks == b].mean() for b in range(num_blocks)])
            b = int(means.sort().indices[(num_blocks - 1) // 2])
            in_block = kern[0, h, i] * (blocks == b)
            expected = in_block @ v[0, h].double() / in_block.sum()
            torch.testing.assert_close(out[0, h, i], expected, rtol=1e-5, atol=1e-5)


def test_block_assignment_rejects_more_blocks_than_tokens():
    with pytest.raises(ValueError, match="between 1 and the number of tokens"):
        block_assignment(4, 5, torch.device("cpu"), shuffle=False)


def hampel_formula(r: float, a: float, b: float, c: float) -> float:
    """Hampel's psi(r)/r written out branch by branch."""
    if r <= a:
        return 1.0
    if r <= b:
        return a / r
    if r <= c:
        return a * (c - r) / ((c - b) * r)
    return 0.0


def test_hampel_psi_over_r_matches_its_formula_pointwise():
    a, b, c = 0.5, 1.0, 2.0
    grid = torch.cat([torch.linspace(0, 3, 61), torch.tensor([a, b, c, 0.75, 1.5, 2.5])]).double()
    thresholds = [torch.tensor(t, dtype=torch.double) for t in (a, b, c)]
    out = psi_over_r(grid, "hampel", *thresholds)
    expected = torch.tensor([hampel_formula(float(r), a, b, c) for r in grid], dtype=torch.double)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    huber = psi_over_r(grid, "huber", *thresholds)
    torch.testing.assert_close(huber, torch.tensor([min(1.0, a / float(r)) if r > 0 else 1.0 for r in grid],
                                                   dtype=torch.double), rtol=1e-12, atol=1e-12)


def mom_reference(q, k, v, blocks, num_blocks, bandwidth, allowed):
    """Loop reference: per query, block means of k(q_i, k_j) over allowed keys only (blocks without an allowed
    key left out), the lower-median block, Nadaraya-Watson over its allowed keys."""
    q, k, v = q.double(), k.double(), v.double()
    kern = torch.exp(-torch.cdist(q, k).pow(2) / bandwidth)
    out = torch.zeros_like(q)
    chosen = torch.zeros(q.shape[:-1], dtype=torch.long)
    B, H, N, _ = q.shape
    for bi in range(B):
        for h in range(H):
            for i in range(N):
                row = allowed[bi, 0, i]
                candidates = [b for b in range(num_blocks) if (row & (blocks == b)).any()]
                means = torch.stack([kern[bi, h, i, row & (blocks == b)].mean() for b in candidates])
                block = candidates[int(means.sort().indices[(len(candidates) - 1) // 2])]
                chosen[bi, h, i] = block
                weight = kern[bi, h, i] * (row & (blocks == block))
                out[bi, h, i] = weight @ v[bi, h] / weight.sum()
    return out, chosen


@pytest.mark.parametrize("mask_kind", ["bool", "-inf", "finfo.min"])
def test_mom_picks_the_median_block_of_the_allowed_keys_under_a_mask(mask_kind):
    torch.manual_seed(5)
    q, k, v = qkv(batch=2, heads=2, tokens=12, scale=2.0)
    num_blocks = 4
    blocks = block_assignment(12, num_blocks, q.device, shuffle=True)
    allowed = torch.rand(2, 1, 12, 12) > 0.45
    allowed[..., 0] = True
    if mask_kind == "bool":
        mask = allowed
    else:
        fill = float("-inf") if mask_kind == "-inf" else torch.finfo(torch.float32).min
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, fill)
    expected, chosen = mom_reference(q, k, v, blocks, num_blocks, 2.0, allowed)
    blind, blind_chosen = mom_reference(q, k, v, blocks, num_blocks, 2.0, torch.ones_like(allowed))
    assert (chosen != blind_chosen).any()
    torch.testing.assert_close(mom_attention(q, k, v, blocks, num_blocks, 2.0, mask).double(), expected,
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(blind, expected, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_norm_equals_f_normalize_with_gradient(dtype):
    """Values and gradients of the fused backward equal autograd of ``F.normalize``, also for a zero row and a
    row shorter than ``eps`` (where the clamp is active and there is no projection)."""
    x = torch.randn(2, 3, 5, 8, dtype=dtype).permute(0, 2, 1, 3)
    x[0, 0, 0] = 0.0
    x[1, 0, 0] = 1e-14
    x.requires_grad_(True)
    g = torch.randn(x.shape, dtype=dtype)
    (ours,) = torch.autograd.grad(unit_norm(x), x, g)
    (reference,) = torch.autograd.grad(F.normalize(x, dim=-1), x, g)
    torch.testing.assert_close(unit_norm(x), F.normalize(x, dim=-1))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    assert torch.equal(unit_norm(x)[0, 0, 0], torch.zeros(8, dtype=dtype))


def test_unit_norm_passes_gradcheck_and_gradgradcheck():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_norm, (x,))
    assert torch.autograd.gradgradcheck(unit_norm, (x,))
