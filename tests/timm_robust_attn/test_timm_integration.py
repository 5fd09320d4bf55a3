"""timm integration: registry names, create_model keywords, checkpoints, conversion, features, tracing."""

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models import vision_transformer

import timm_robust_attn
from timm_robust_attn import KDEAttention, MoMAttention, RKDEAttention, SPKDEAttention, convert_attention

SMALL = {"img_size": 32, "patch_size": 8, "num_classes": 5, "depth": 2}
NAMES = {"kde": KDEAttention, "rkde": RKDEAttention, "spkde": SPKDEAttention, "mom": MoMAttention}


def images(batch=2):
    return torch.randn(batch, 3, 32, 32)


def test_registration_is_idempotent():
    init = vision_transformer.VisionTransformer.__init__
    timm_robust_attn.register()
    timm_robust_attn.register()
    assert vision_transformer.VisionTransformer.__init__ is init
    for name, cls in NAMES.items():
        assert vision_transformer.ATTN_LAYERS[name] is cls


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
@pytest.mark.parametrize("name", sorted(NAMES))
def test_create_model_with_attn_layer_name(model_name, name):
    model = timm.create_model(model_name, attn_layer=name, **SMALL).eval()
    assert all(type(block.attn) is NAMES[name] for block in model.blocks)
    out = model(images())
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_create_model_attn_and_attn_kwargs_reach_the_modules():
    model = timm.create_model(
        "deit_tiny_patch16_224", attn="rkde",
        attn_kwargs={"loss": "hampel", "threshold": 0.4, "iterations": 3}, **SMALL)
    for block in model.blocks:
        assert isinstance(block.attn, RKDEAttention)
        assert (block.attn.loss, block.attn.threshold, block.attn.iterations) == ("hampel", 0.4, 3)
    spkde = timm.create_model("vit_tiny_patch16_224", attn_layer="spkde", attn_kwargs={"steps": 7}, **SMALL)
    assert spkde.blocks[0].attn.steps == 7
    assert timm_robust_attn.attention_class("mom", num_blocks=3) is timm_robust_attn.attention_class(
        "mom", num_blocks=3)


def test_bad_attn_kwargs_raise_value_error_naming_allowed_values():
    with pytest.raises(ValueError, match=r"one of \('huber', 'hampel'\)"):
        timm.create_model("vit_tiny_patch16_224", attn="rkde", attn_kwargs={"loss": "l1"}, **SMALL)
    allowed = r"expected one of \['kde', 'mom', 'rkde', 'spkde', 'attn', 'softmax'\]"
    with pytest.raises(ValueError, match=allowed):
        timm.create_model("vit_tiny_patch16_224", attn="robust", **SMALL)
    with pytest.raises(ValueError, match="bad option for 'mom'"):
        timm_robust_attn.attention_class("mom", loss="huber")


def test_standard_vit_state_dict_loads_without_missing_or_unexpected_keys():
    reference = timm.create_model("vit_tiny_patch16_224", **SMALL)
    for name in NAMES:
        model = timm.create_model("vit_tiny_patch16_224", attn_layer=name, **SMALL)
        result = model.load_state_dict(reference.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert set(model.state_dict()) == set(reference.state_dict())


def test_convert_pretrained_like_model_and_restore_bit_for_bit():
    model = timm.create_model("vit_tiny_patch16_224", qk_norm=True, **SMALL).eval()
    x = images()
    with torch.no_grad():
        original = model(x)
    params = {name: p for name, p in model.named_parameters()}
    convert_attention(model, "rkde", loss="hampel", iterations=2)
    assert all(isinstance(block.attn, RKDEAttention) for block in model.blocks)
    assert all(p is params[name] for name, p in model.named_parameters())
    with torch.no_grad():
        robust = model(x)
    assert torch.isfinite(robust).all() and not torch.allclose(robust, original)
    convert_attention(model, "mom", num_blocks=4)
    convert_attention(model, "softmax")
    assert all(type(block.attn) is Attention for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), original)


@pytest.mark.parametrize(
    ("model_name", "attention"),
    [("eva02_tiny_patch14_224", "EvaAttention"), ("beit_base_patch16_224", "Attention"),
     ("swin_tiny_patch4_window7_224", "WindowAttention")],
)
def test_convert_refuses_families_with_their_own_attention(model_name, attention):
    extra = {"depth": 1} if model_name.startswith("beit") else {}
    model = timm.create_model(model_name, pretrained=False, num_classes=2, **extra)
    message = rf"no timm.layers.Attention to convert \(found .*{attention}.*eva, beit, swin"
    with pytest.raises(ValueError, match=message):
        convert_attention(model, "rkde")


def test_unknown_conversion_target_raises():
    model = timm.create_model("vit_tiny_patch16_224", **SMALL)
    with pytest.raises(ValueError, match="unknown attention 'huber'"):
        convert_attention(model, "huber")


def test_features_only_and_forward_features():
    backbone = {k: v for k, v in SMALL.items() if k != "num_classes"}
    model = timm.create_model(
        "vit_tiny_patch16_224", attn_layer="rkde", features_only=True, out_indices=(0, 1), **backbone)
    features = model(images())
    assert [f.shape for f in features] == [(2, 192, 4, 4)] * 2
    vit = timm.create_model("vit_tiny_patch16_224", attn="rkde", **SMALL)
    assert vit.forward_features(images()).shape == (2, 17, 192)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_jit_trace_matches_eager(name):
    model = timm.create_model("vit_tiny_patch16_224", attn_layer=name, **SMALL).eval()
    x = images()
    traced = torch.jit.trace(model, x, check_trace=False)
    y = images(3)
    torch.testing.assert_close(traced(y), model(y))


@pytest.mark.parametrize("name", sorted(NAMES))
def test_gradient_flows_through_the_whole_model(name):
    model = timm.create_model("vit_tiny_patch16_224", attn_layer=name, **SMALL)
    torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_model_with_bound_options_pickles_and_deep_copies() -> None:
    import copy
    import io

    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, attn="rkde",
        attn_kwargs={"loss": "hampel", "iterations": 2},
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
        assert type(clone.blocks[0].attn) is type(model.blocks[0].attn)
        assert clone.blocks[0].attn.loss == "hampel" and clone.blocks[0].attn.iterations == 2
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
