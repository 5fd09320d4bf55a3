"""timm-native behaviour: timm's model-suite checks (forward, backward, features, intermediates, FX,
TorchScript) with every robust attention, ParallelScalingBlock models, set_fused_attn / AttentionExtract,
pickling of option-bound classes, and convert_attention's hooks and carried options."""

import io
import math
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from timm.layers import config as timm_layer_config
from timm.layers import set_layer_config
from timm.models import create_feature_extractor, get_graph_node_names
from timm.models.vision_transformer import Block, ParallelScalingBlock
from timm.utils import AttentionExtract

import timm_robust_attn
from timm_robust_attn import (
    KDEAttention,
    RKDEAttention,
    RobustParallelScalingBlock,
    attention_class,
    convert_attention,
)
from timm_robust_attn.functional import finfo

ROBUST = ["kde", "rkde", "spkde", "mom"]
SMALL = {"img_size": 32, "patch_size": 8, "depth": 3}  # timm's features_only takes the last 3 blocks
MODELS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "xp": ("vit_base_patch16_xp_224", {"embed_dim": 64, "num_heads": 4}),  # ParallelScalingBlock, qk_norm
}


def make(model: str, layer=None, **kwargs) -> torch.nn.Module:
    """A small ``MODELS[model]`` with ``attn_layer=layer`` (timm's default when None)."""
    name, extra = MODELS[model]
    options = {"attn_layer": layer} if layer is not None else {}
    return timm.create_model(name, **SMALL, **extra, **options, **kwargs)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32)


def fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's FX wrapper (its leaf modules and no-trace functions), returning the final node."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    return create_feature_extractor(model, [(train_nodes if train else eval_nodes)[-1]])


@pytest.fixture
def unfused(monkeypatch):
    """timm's ``set_fused_attn(False)`` for modules built inside the test."""
    monkeypatch.setattr(timm_layer_config, "_USE_FUSED_ATTN", 0)


# --- timm's model suite (tests/test_models.py), per attention, on small configs -------------------------


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ROBUST)
def test_forward_is_finite_and_grad_checkpointing_keeps_the_output(model_name, attn):
    model = make(model_name, attn, num_classes=5).eval()
    x = images()
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ROBUST)
def test_backward_reaches_every_parameter(model_name, attn):
    model = make(model_name, attn, num_classes=42).train()
    model(images()).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ROBUST)
def test_features_only_and_intermediates_match_forward_features(model_name, attn):
    x = images(1)
    for feature_cls in (None, "getter"):
        extra = {"feature_cls": feature_cls} if feature_cls else {}
        backbone = make(model_name, attn, features_only=True, **extra).eval()
        features = backbone(x)
        assert [f.shape[1] for f in features] == backbone.feature_info.channels()
        assert all(f.shape[-2:] == (4, 4) and torch.isfinite(f).all() for f in features)
    model = make(model_name, attn).eval()
    final, intermediates = model.forward_intermediates(x)
    assert len(intermediates) == SMALL["depth"]
    torch.testing.assert_close(final, model.forward_features(x))


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ROBUST)
def test_fx_graph_forward_equals_eager_and_backward_reaches_every_parameter(model_name, attn):
    model = make(model_name, attn).eval()
    x = images(1)
    with torch.inference_mode():
        eager = model(x)
        traced = next(iter(fx_model(model)(x).values()))
    assert torch.equal(traced, eager)
    train = fx_model(make(model_name, attn, num_classes=42).train(), train=True)
    next(iter(train(images()).values())).mean().backward()
    assert all(p.grad is not None for p in train.parameters())


@pytest.mark.parametrize("attn", ["rkde", "spkde", "mom"])
def test_data_dependent_steps_are_fx_leaves(attn):
    leaf = {"rkde": "kirwls_key_value_weights", "spkde": "spkde_weights",
            "mom": "mom_attention_blocks"}[attn]
    nodes = get_graph_node_names(make("vit", attn))[1]
    assert f"blocks.0.attn.{leaf}" in nodes


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ROBUST)
def test_torchscript_matches_eager_and_survives_save_load(model_name, attn):
    with set_layer_config(scriptable=True):
        model = make(model_name, attn).eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = images()
    torch.testing.assert_close(scripted(x), model(x))
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("attn", ROBUST)
def test_torchscript_of_the_fx_graph_runs(attn):
    with set_layer_config(scriptable=True):
        model = make("vit", attn).eval()
    scripted = torch.jit.script(fx_model(model))
    x = images(1)
    with torch.inference_mode():
        torch.testing.assert_close(next(iter(scripted(x).values())), model(x))


def test_finfo_matches_torch_finfo():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert finfo(dtype) == (torch.finfo(dtype).tiny, torch.finfo(dtype).eps)


# --- ParallelScalingBlock (vit_*_xp_*, vit_pwee_*) -------------------------------------------------------


@pytest.mark.parametrize("attn", ROBUST)
def test_parallel_scaling_models_take_the_robust_attention_and_load_timm_state_dicts(attn):
    reference = make("xp")
    model = make("xp", attn)
    assert all(type(b) is RobustParallelScalingBlock for b in model.blocks)
    assert all(type(b.attn) is timm_robust_attn.ROBUST_ATTN_LAYERS[attn] for b in model.blocks)
    result = model.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = images()
    assert not torch.allclose(model.eval()(x), reference.eval()(x))


def test_parallel_scaling_attn_kwargs_and_bound_classes_reach_the_estimator():
    model = make("xp", attn="rkde", attn_kwargs={"loss": "hampel", "iterations": 3})
    assert {(b.attn.loss, b.attn.iterations) for b in model.blocks} == {("hampel", 3)}
    huge = timm.create_model("vit_huge_patch14_xp_224", attn="spkde", attn_kwargs={"steps": 5}, img_size=28,
                             embed_dim=64, num_heads=4, depth=1)
    assert type(huge.blocks[0]) is RobustParallelScalingBlock and huge.blocks[0].attn.steps == 5
    assert torch.isfinite(huge(torch.randn(1, 3, 28, 28))).all()
    kde = attention_class("kde", bandwidth=3.0)
    model = timm.create_model("vit_pwee_patch16_reg1_gap_256", attn_layer=kde, depth=1, img_size=32)
    assert model.blocks[0].attn.bandwidth == 3.0


class _UnitKeys(torch.nn.Module):
    def forward(self, k):
        return torch.nn.functional.normalize(k, dim=-1)


@pytest.mark.parametrize("fuse_out_proj", [False, True])
def test_parallel_scaling_kde_block_equals_timms_block_on_unit_keys(fuse_out_proj):
    """Oracle: timm's own (unfused) ParallelScalingBlock with L2-normalised keys and scale 2/sigma."""
    torch.manual_seed(0)
    timm_block = ParallelScalingBlock(32, 4, init_values=0.5, fuse_out_proj=fuse_out_proj).eval()
    robust = RobustParallelScalingBlock(32, 4, init_values=0.5, fuse_out_proj=fuse_out_proj, attn_layer="kde")
    robust.eval()
    robust.load_state_dict(timm_block.state_dict(), strict=True)
    timm_block.k_norm, timm_block.fused_attn = _UnitKeys(), False
    timm_block.scale = 2 / robust.attn.bandwidth
    x = torch.randn(2, 7, 32)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(robust(x), timm_block(x))
    torch.testing.assert_close(robust(x, attn_mask=mask), timm_block(x, attn_mask=mask))


def test_blocks_that_ignore_attn_layer_raise_and_parallel_scaling_blocks_are_upgraded():
    with pytest.raises(ValueError, match="DiffParallelScalingBlock ignores attn_layer"):
        timm.create_model("vit_dpwee_patch16_reg1_gap_256", attn_layer="rkde", depth=1, img_size=32)
    model = make("vit", "rkde", block_fn=ParallelScalingBlock)
    assert type(model.blocks[0]) is RobustParallelScalingBlock
    with pytest.raises(ValueError, match="needs a robust attention"):
        RobustParallelScalingBlock(32, 4, attn_layer="attn")
    model = make("vit", "attn", block_fn=ParallelScalingBlock)
    assert type(model.blocks[0]) is ParallelScalingBlock  # softmax: timm's block untouched


# --- set_fused_attn(False) and AttentionExtract -----------------------------------------------------------


@pytest.mark.parametrize("attn", ["kde", "rkde", "spkde"])
def test_unfused_path_equals_the_fused_one(attn, unfused):
    model = make("vit", attn).eval()
    assert not any(m.fused_attn for m in model.modules() if isinstance(m, KDEAttention))
    fused = make("vit", attn).eval()
    for m in fused.modules():
        if isinstance(m, KDEAttention):
            m.fused_attn = True
    fused.load_state_dict(model.state_dict())
    x = images()
    mask = torch.rand(2, 1, 17, 17) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(model(x), fused(x), rtol=1e-5, atol=1e-5)
    block = model.blocks[0].attn, fused.blocks[0].attn
    tokens = torch.randn(2, 17, 192)
    torch.testing.assert_close(block[0](tokens, attn_mask=mask), block[1](tokens, attn_mask=mask),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("attn", ["kde", "rkde", "spkde", "mom"])
def test_attention_extract_hooks_see_the_attention_maps(model_name, attn, unfused):
    model = make(model_name, attn).eval()
    maps = AttentionExtract(model, method="hook")(images())
    assert len(maps) == SMALL["depth"]
    heads = 3 if model_name == "vit" else 4
    assert all(a.shape == (2, heads, 17, 17) for a in maps.values())


@pytest.mark.parametrize("attn", ["kde", "rkde", "spkde"])
def test_attention_extract_fx_sees_the_softmax_like_timm_attention(attn, unfused):
    model = make("vit", attn).eval()
    maps = AttentionExtract(model, method="fx")(images())
    assert sorted(maps) == [f"blocks.{i}.attn.softmax" for i in range(SMALL["depth"])]


@pytest.mark.parametrize("attn", ["kde", "rkde"])
def test_extracted_map_is_the_kernel_formula(attn, unfused):
    """``A_ij = w^kv_j k(q_i, k_j) / sum_l w^k_l k(q_i, k_l)`` with the Gaussian kernel evaluated directly."""
    torch.manual_seed(1)
    module = timm_robust_attn.ROBUST_ATTN_LAYERS[attn](16, num_heads=2).eval()
    seen = {}
    module.attn_drop.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    module.double()
    out = module(x)
    q, k, v = module.qkv(x).reshape(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    k = torch.nn.functional.normalize(k, dim=-1)
    valid = torch.ones(2, 2, 9, dtype=torch.bool)
    w_num, w_den = module.key_weights(k, v, valid) if attn == "rkde" else (torch.ones(2, 2, 9),) * 2
    kernel = torch.exp(-torch.cdist(q, k).pow(2) / module.bandwidth)
    expected = kernel * w_num.unsqueeze(-2).double() / (kernel * w_den.unsqueeze(-2).double()).sum(-1, True)
    torch.testing.assert_close(seen["map"], expected)
    head_out = (seen["map"] @ v).transpose(1, 2).reshape(2, 9, 16)
    torch.testing.assert_close(out, module.proj(head_out))


# --- pickling and convert_attention -----------------------------------------------------------------------


@pytest.mark.slow
def test_option_bound_classes_pickle_by_value_in_a_fresh_process():
    cls = attention_class("rkde", iterations=2, loss="hampel")
    assert pickle.loads(pickle.dumps(cls)) is cls
    blob = pickle.dumps((cls, cls(16, num_heads=2)))
    script = ("import pickle, sys; cls, m = pickle.loads(sys.stdin.buffer.read()); "
              "print(cls.__qualname__, m.iterations, m.loss, type(m) is cls)")
    result = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, check=True)
    assert result.stdout.decode().split() == ["RKDEAttention[rkde]", "2", "hampel", "True"]


def test_convert_keeps_user_hooks_and_handles_still_remove_them():
    model = make("vit").eval()
    calls = []
    attn = model.blocks[0].attn
    post = attn.register_forward_hook(lambda m, i, o: calls.append(("post", type(m).__name__)))
    attn.register_forward_pre_hook(lambda m, i: calls.append(("pre", type(m).__name__)))
    convert_attention(model, "rkde")
    model(images())
    assert calls == [("pre", "RKDEAttention"), ("post", "RKDEAttention")]
    convert_attention(model, "softmax")
    post.remove()
    calls.clear()
    model(images())
    assert calls == [("pre", "Attention")]


def test_convert_carries_options_the_target_has_unless_given():
    model = make("vit", attention_class("kde", bandwidth=2.5))
    convert_attention(model, "rkde", loss="hampel")
    assert {(b.attn.bandwidth, b.attn.loss) for b in model.blocks} == {(2.5, "hampel")}
    convert_attention(model, "rkde", iterations=3)
    assert {(b.attn.bandwidth, b.attn.loss, b.attn.iterations) for b in model.blocks} == {(2.5, "hampel", 3)}
    convert_attention(model, "spkde", bandwidth=4.0)
    assert {(b.attn.bandwidth, b.attn.steps) for b in model.blocks} == {(4.0, 1000)}
    convert_attention(model, "softmax")
    convert_attention(model, "rkde")
    assert model.blocks[0].attn.bandwidth == math.sqrt(64)  # nothing to carry from softmax


def test_convert_parallel_scaling_model_both_ways_bit_for_bit():
    model = make("xp").eval()
    x = images()
    with torch.no_grad():
        original = model(x)
    params = dict(model.named_parameters())
    hook_calls = []
    model.blocks[1].attn_drop.register_forward_hook(lambda m, i, o: hook_calls.append(o.shape))
    convert_attention(model, "kde", bandwidth=3.0)
    convert_attention(model, "rkde", iterations=2)
    assert all(type(b) is RobustParallelScalingBlock for b in model.blocks)
    assert {(b.attn.bandwidth, b.attn.iterations) for b in model.blocks} == {(3.0, 2)}
    assert all(p is params[n] for n, p in model.named_parameters())
    for block in model.blocks:
        block.attn.fused_attn = False
    model(x)
    assert hook_calls == [(2, 4, 17, 17)]
    convert_attention(model, "softmax")
    assert all(type(b) is ParallelScalingBlock for b in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), original)


def test_plain_blocks_are_untouched_by_the_constructor_wrapper():
    model = make("vit", attention_class("rkde", iterations=2))
    bound = attention_class("rkde", iterations=2)
    assert all(type(b) is Block and type(b.attn) is bound for b in model.blocks)
    assert isinstance(model.blocks[0].attn, RKDEAttention)
