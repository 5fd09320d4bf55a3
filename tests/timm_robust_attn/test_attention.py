"""Attention modules: exact limits, robustness, masks, dropout, dtypes and option validation."""

import math

import pytest
import torch
from timm.layers import Attention

from timm_robust_attn import KDEAttention, MoMAttention, RKDEAttention, SPKDEAttention, convert_attention

from .test_functional import direct_weighted_kde

DIM, HEADS, TOKENS = 32, 2, 16
ROBUST = [
    (RKDEAttention, {}),
    (RKDEAttention, {"loss": "hampel", "iterations": 2}),
    (RKDEAttention, {"threshold": 0.5}),
    (SPKDEAttention, {}),
]


def tokens(batch=2, n=TOKENS, dim=DIM):
    return torch.randn(batch, n, dim) * 0.5 + torch.randn(1, 1, dim)


def same_weights(cls, reference, **options):
    module = cls(DIM, num_heads=HEADS, qkv_bias=True, **options)
    module.load_state_dict(reference.state_dict())
    return module.eval()


def split_heads(module, x):
    B, N, _ = x.shape
    q, k, v = module.qkv(x).reshape(B, N, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
    return q, torch.nn.functional.normalize(k, dim=-1), v


def test_kde_module_equals_direct_formula():
    module = KDEAttention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    x = tokens()
    q, k, v = split_heads(module, x)
    uniform = torch.ones(q.shape[:-1])
    h = direct_weighted_kde(q, k, v, uniform, uniform, math.sqrt(DIM // HEADS)).float()
    expected = module.proj(h.transpose(1, 2).reshape(2, TOKENS, DIM))
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["huber", "hampel"])
def test_rkde_with_zero_iterations_equals_kde(loss):
    kde = KDEAttention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    rkde = same_weights(RKDEAttention, kde, loss=loss, iterations=0)
    x = tokens()
    torch.testing.assert_close(rkde(x), kde(x), rtol=1e-5, atol=1e-6)


def test_rkde_module_uses_kirwls_weights_in_direct_formula():
    module = RKDEAttention(DIM, num_heads=HEADS, qkv_bias=True, iterations=2).eval()
    x = tokens()
    q, k, v = split_heads(module, x)
    w_num, w_den = module.key_weights(k, v, torch.ones(q.shape[:-1], dtype=torch.bool))
    assert not torch.allclose(w_num, w_den)
    h = direct_weighted_kde(q, k, v, w_num, w_den, module.bandwidth).float()
    expected = module.proj(h.transpose(1, 2).reshape(2, TOKENS, DIM))
    torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"loss": "hampel"}])
def test_one_contaminated_token_moves_rkde_less_than_softmax(options):
    softmax = Attention(DIM, num_heads=HEADS, qkv_bias=True).eval()
    kde = same_weights(KDEAttention, softmax)
    rkde = same_weights(RKDEAttention, softmax, **options)
    x = tokens()
    j = int(torch.randint(TOKENS, ()))
    contaminated = x.clone()
    contaminated[:, j] += 8 * torch.randn(DIM)
    others = torch.arange(TOKENS) != j

    def change(module):
        with torch.no_grad():
            clean = module(x)[:, others]
            return ((module(contaminated)[:, others] - clean).norm() / clean.norm()).item()

    assert change(rkde) < 0.8 * change(softmax)
    assert change(rkde) < 0.8 * change(kde)


@pytest.mark.parametrize(("cls", "options"), [(KDEAttention, {})] + ROBUST)
def test_masked_keys_are_the_same_as_removed_tokens(cls, options):
    module = cls(DIM, num_heads=HEADS, qkv_bias=True, **options).eval()
    x = tokens()
    keep = 11
    mask = torch.zeros(2, 1, TOKENS, TOKENS, dtype=torch.bool)
    mask[..., :keep] = True
    masked = module(x, attn_mask=mask)[:, :keep]
    torch.testing.assert_close(masked, module(x[:, :keep]), rtol=1e-4, atol=1e-5)
    additive = torch.zeros(2, 1, TOKENS, TOKENS).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(module(x, attn_mask=additive)[:, :keep], masked, rtol=1e-5, atol=1e-6)


def test_mom_ignores_masked_keys():
    module = MoMAttention(DIM, num_heads=HEADS, num_blocks=3).eval()
    x = tokens()
    mask = torch.ones(1, 1, 1, TOKENS, dtype=torch.bool)
    mask[..., 4] = False
    out = module(x, attn_mask=mask)
    x_changed = x.clone()
    x_changed[:, 4] += 5.0
    torch.testing.assert_close(module(x_changed, attn_mask=mask)[:, torch.arange(TOKENS) != 4],
                               out[:, torch.arange(TOKENS) != 4])


def test_causal_kde_matches_explicit_mask_and_robust_refuses():
    module = KDEAttention(DIM, num_heads=HEADS).eval()
    x = tokens()
    tril = torch.ones(TOKENS, TOKENS, dtype=torch.bool).tril()
    torch.testing.assert_close(module(x, is_causal=True), module(x, attn_mask=tril))
    mom = MoMAttention(DIM, num_heads=HEADS, num_blocks=2).eval()
    torch.testing.assert_close(mom(x, is_causal=True), mom(x, attn_mask=tril))
    with pytest.raises(ValueError, match="leak future"):
        RKDEAttention(DIM, num_heads=HEADS)(x, is_causal=True)


@pytest.mark.parametrize(("cls", "options"), [(KDEAttention, {}), (MoMAttention, {})] + ROBUST)
def test_attention_dropout_is_honoured(cls, options):
    module = cls(DIM, num_heads=HEADS, attn_drop=0.5, **options)
    x = tokens()
    assert not torch.allclose(module(x), module(x))
    module.eval()
    torch.testing.assert_close(module(x), module(x))


@pytest.mark.parametrize(("cls", "options"), [(KDEAttention, {}), (MoMAttention, {})] + ROBUST)
def test_bfloat16_and_large_inputs_stay_finite_and_close(cls, options):
    module = cls(DIM, num_heads=HEADS, **options).eval()
    x = tokens()
    reference = module(x)
    low = module.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert torch.isfinite(low).all()
    assert (low - reference).norm() < 0.05 * reference.norm()
    assert torch.isfinite(module.float()(100 * x)).all()


@pytest.mark.parametrize("weight_grad", [False, True])
def test_gradients_reach_every_parameter(weight_grad):
    module = RKDEAttention(DIM, num_heads=HEADS, qkv_bias=True, weight_grad=weight_grad)
    x = tokens().requires_grad_()
    module(x).pow(2).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_weight_grad_changes_the_gradient_not_the_output():
    detached = RKDEAttention(DIM, num_heads=HEADS, qkv_bias=True, iterations=2)
    attached = same_weights(RKDEAttention, detached, iterations=2, weight_grad=True).train()
    x = tokens()
    torch.testing.assert_close(attached(x), detached(x))
    grads = []
    for module in (detached, attached):
        module(x).pow(2).sum().backward()
        grads.append(module.qkv.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (RKDEAttention, {"loss": "cauchy"}, r"loss must be one of \('huber', 'hampel'\)"),
        (RKDEAttention, {"threshold": -0.1}, "threshold must be a positive float"),
        (RKDEAttention, {"threshold": (0.5, 0.2, 0.9)}, "0 < a <= b < c"),
        (RKDEAttention, {"threshold": (0.5, 0.9)}, r"must be \(a, b, c\)"),
        (RKDEAttention, {"iterations": -1}, "non-negative int"),
        (SPKDEAttention, {"contamination": 1.0}, r"contamination must be in \[0, 1\)"),
        (MoMAttention, {"num_blocks": 0}, "positive int"),
        (KDEAttention, {"bandwidth": 0.0}, "bandwidth must be a positive float"),
    ],
)
def test_bad_options_raise_value_error(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(DIM, num_heads=HEADS, **options)


def test_more_blocks_than_tokens_raises_value_error():
    with pytest.raises(ValueError, match=r"between 1 and the number of tokens \(16\), got 17"):
        MoMAttention(DIM, num_heads=HEADS, num_blocks=17)(tokens())


def test_converted_module_shares_parameters_and_restores_bit_for_bit():
    model = torch.nn.Sequential(Attention(DIM, num_heads=HEADS, qkv_bias=True, qk_norm=True,
                                          norm_layer=torch.nn.LayerNorm)).eval()
    x = tokens()
    original = model(x)
    weight = model[0].qkv.weight
    convert_attention(model, "rkde", loss="hampel")
    assert isinstance(model[0], RKDEAttention) and model[0].loss == "hampel"
    assert model[0].qkv.weight is weight and not model[0].training
    assert not torch.allclose(model(x), original)
    convert_attention(model, "attn")
    assert type(model[0]) is Attention
    assert torch.equal(model(x), original)
