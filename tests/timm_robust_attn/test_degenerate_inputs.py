"""Edges users hit: one token, identical tokens, blank images, near-identity Grams, float32 against float64,
and masks written with ``finfo.min`` (timm NaFlex) instead of ``-inf``."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.naflexvit import create_attention_mask

from timm_robust_attn import KDEAttention, MoMAttention, RKDEAttention, SPKDEAttention, attention_class
from timm_robust_attn.functional import (
    key_value_grams,
    kirwls_weights,
    psi_over_r,
    spkde_weights,
    valid_keys,
)

DIM, HEADS = 32, 2
ROBUST = [
    (RKDEAttention, {"loss": "huber"}),
    (RKDEAttention, {"loss": "hampel", "iterations": 2}),
    (RKDEAttention, {"loss": "huber", "threshold": 0.3}),
    (RKDEAttention, {"loss": "hampel", "threshold": (0.1, 0.2, 0.3)}),
    (SPKDEAttention, {}),
    (MoMAttention, {"num_blocks": 3}),
]


def sharpened(module: torch.nn.Module, gain: float = 20.0) -> torch.nn.Module:
    """Scale the qkv weights so that keys and values spread out against the bandwidth, as after training."""
    with torch.no_grad():
        module.qkv.weight.mul_(gain)
    return module.eval()


def kde_twin(module: torch.nn.Module) -> KDEAttention:
    kde = KDEAttention(DIM, num_heads=HEADS, qkv_bias=True)
    kde.load_state_dict(module.state_dict())
    return kde.eval()


@pytest.mark.parametrize("loss", ["huber", "hampel"])
def test_psi_over_r_is_one_up_to_a_even_when_a_is_zero(loss):
    r = torch.tensor([0.0, 0.0, 0.3, 0.5], dtype=torch.double)
    a = torch.tensor([0.0, 0.2, 0.3, 0.5], dtype=torch.double)
    torch.testing.assert_close(psi_over_r(r, loss, a, a, a), torch.ones_like(r))


@pytest.mark.parametrize("loss", ["huber", "hampel"])
@pytest.mark.parametrize("tokens", [1, 7])
def test_kirwls_weights_are_uniform_on_identical_tokens(loss, tokens):
    k = F.normalize(torch.randn(2, HEADS, 1, 16), dim=-1).expand(-1, -1, tokens, -1)
    v = torch.randn(2, HEADS, 1, 16).expand(-1, -1, tokens, -1) * 5
    gram_k, gram_kv = key_value_grams(k, v, 4.0)
    assert torch.equal(gram_k, torch.ones_like(gram_k)) and torch.equal(gram_kv, torch.ones_like(gram_kv))
    for threshold in (None, 0.2):
        for gram in (gram_k, gram_kv):
            w = kirwls_weights(gram, iterations=2, loss=loss, threshold=threshold)
            torch.testing.assert_close(w, torch.full_like(w, 1 / tokens))


def test_gram_diagonal_is_exactly_one():
    k = F.normalize(torch.randn(3, 2, 20, 16) * 7, dim=-1)
    v = torch.randn(3, 2, 20, 16) * 30
    for gram in key_value_grams(k, v, 4.0):
        assert torch.equal(gram.diagonal(dim1=-2, dim2=-1), torch.ones(3, 2, 20))


@pytest.mark.parametrize("loss", ["huber", "hampel"])
def test_kirwls_weights_are_uniform_when_residual_spread_collapses(loss):
    """A Gram equal to the identity up to 1e-9: every residual is the same up to rounding."""
    noise = 1e-9 * torch.rand(4, 30, 30)
    gram = torch.eye(30) + (noise + noise.transpose(-2, -1))
    w = kirwls_weights(gram, iterations=2, loss=loss)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 30), rtol=0, atol=1e-9)


def test_hampel_with_every_key_past_c_gives_uniform_weights_not_zeros():
    x = F.normalize(torch.randn(2, 12, 6), dim=-1)
    gram = torch.exp(-torch.cdist(x, x).pow(2))
    w = kirwls_weights(gram, iterations=1, loss="hampel", threshold=(1e-3, 2e-3, 3e-3))
    torch.testing.assert_close(w, torch.full_like(w, 1 / 12))


@pytest.mark.parametrize(("cls", "options"), ROBUST)
@pytest.mark.parametrize("tokens", [1, 9])
def test_every_estimator_equals_kde_on_identical_tokens(cls, options, tokens):
    if "num_blocks" in options:
        options = {**options, "num_blocks": min(options["num_blocks"], tokens)}
    module = sharpened(cls(DIM, num_heads=HEADS, qkv_bias=True, **options))
    x = torch.randn(2, 1, DIM).expand(-1, tokens, -1)
    with torch.no_grad():
        torch.testing.assert_close(module(x), kde_twin(module)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rkde", "spkde"])
def test_blank_image_avg_pool_vit_features_equal_kde(name):
    """No class token or position embedding: a blank image makes every token identical."""
    options = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                   class_token=False, global_pool="avg", pos_embed="none", num_classes=0)
    torch.manual_seed(0)
    robust = timm.create_model("vit_tiny_patch16_224", attn_layer=name, **options).eval()
    kde = timm.create_model("vit_tiny_patch16_224", attn_layer="kde", **options).eval()
    kde.load_state_dict(robust.state_dict())
    blank = torch.full((2, 3, 32, 32), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(robust(blank), kde(blank), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["huber", "hampel"])
@pytest.mark.parametrize("iterations", [1, 2])
def test_float32_and_float64_agree_at_input_scale_3(loss, iterations):
    """Value distances large against the bandwidth make the joint Gram close to the identity."""
    torch.manual_seed(0)
    module = RKDEAttention(64, num_heads=4, loss=loss, iterations=iterations).eval()
    x = torch.randn(2, 50, 64) * 3
    with torch.no_grad():
        single = module(x).double()
        double = copy.deepcopy(module).double()(x.double())
    assert ((single - double).norm() / double.norm()) < 1e-4


def test_finfo_min_counts_as_masked_in_valid_keys():
    mask = torch.zeros(1, 1, 3, 4)
    mask[..., 2:] = torch.finfo(torch.float32).min
    expected = torch.tensor([True, True, False, False]).expand(1, 2, 4)
    assert torch.equal(valid_keys(mask, 1, 2, 4, mask.device), expected)


@pytest.mark.parametrize(("cls", "options"), ROBUST)
def test_finfo_min_mask_equals_boolean_mask(cls, options):
    module = sharpened(cls(DIM, num_heads=HEADS, qkv_bias=True, **options))
    x = torch.randn(2, 12, DIM)
    allowed = torch.ones(2, 1, 12, 12, dtype=torch.bool)
    allowed[0, ..., 8:] = False
    allowed[1, ..., 5:] = False
    finfo_min = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        torch.testing.assert_close(module(x, attn_mask=finfo_min), module(x, attn_mask=allowed))


@pytest.mark.parametrize("name", ["kde", "rkde", "spkde", "mom"])
def test_naflexvit_padding_does_not_leak_into_valid_tokens(name):
    """timm NaFlex pads with ``create_attention_mask`` (``finfo.min``); padded tokens must not matter."""
    torch.manual_seed(0)
    layer = attention_class("mom", num_blocks=3) if name == "mom" else name
    model = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, embed_dim=64, depth=2,
                              num_heads=2, num_classes=5, attn_layer=layer).eval()
    for block in model.blocks:
        sharpened(block.attn)
    batch, tokens, valid_tokens = 2, 12, 8
    patches = torch.randn(batch, tokens, 16 * 16 * 3)
    coord = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij"), -1)
    coord = coord.reshape(1, tokens, 2).expand(batch, -1, -1)
    patch_valid = torch.arange(tokens) < valid_tokens
    patch_valid = patch_valid.expand(batch, -1)
    keep = model.num_prefix_tokens + valid_tokens
    mask = create_attention_mask(patch_valid, model.num_prefix_tokens, dtype=torch.float32)
    assert mask.min() == torch.finfo(torch.float32).min
    padding_shift: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def shift_padding(module, args, kwargs):
        if padding_shift:
            x = args[0].clone()
            x[:, keep:] += padding_shift[0]
            return (x, *args[1:]), kwargs
        return None

    model.blocks[0].register_forward_pre_hook(shift_padding, with_kwargs=True)
    model.blocks[0].attn.register_forward_hook(lambda module, args, out: outputs.append(out[:, :keep]))
    with torch.no_grad():
        clean = model.forward_features(patches, patch_coord=coord, patch_valid=patch_valid)["patches"]
        padding_shift.append(3 * torch.randn(batch, tokens - valid_tokens, 64))
        shifted = model.forward_features(patches, patch_coord=coord, patch_valid=patch_valid)["patches"]
    assert outputs[0].abs().max() > 0.1
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shifted[:, :keep], clean[:, :keep], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attn_cls,kwargs", [
    (KDEAttention, {}), (RKDEAttention, {"iterations": 1}), (RKDEAttention, {"iterations": 2}),
    (SPKDEAttention, {}), (SPKDEAttention, {"weight_grad": True}),
])
def test_zero_tokens_give_an_empty_output_as_timm_attention_does(attn_cls, kwargs):
    """RKDE with one (chunked path) and two iterations (whole-Gram path); SPKDE's solvers get no keys."""
    x = torch.randn(2, 0, 16, requires_grad=True)
    assert Attention(16, num_heads=2)(x).shape == (2, 0, 16)
    out = attn_cls(16, num_heads=2, **kwargs)(x)
    assert out.shape == (2, 0, 16)
    out.sum().backward()
    assert x.grad.shape == (2, 0, 16)


def test_spkde_weights_of_no_keys_are_empty():
    assert spkde_weights(torch.zeros(3, 2, 0, 0), 0.1, 50).shape == (3, 2, 0)
