"""TransformerWeightSpace readers/writers and the attention group acting on real models of every family."""

import math

import pytest
import torch
from torch import nn

from nfn_ext import TransformerWeightSpace, random_group_element
from nfn_ext.transformer_group import AttentionGroupElement
from tests.nfn_ext.transformer_models import BLOCKS, D_MLP, FAMILIES, HEADS, D, make


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reads_the_shapes_of_every_family(family):
    model, _, _ = make(family)
    ws = TransformerWeightSpace.from_module(model)
    spec = ws.spec
    blocks = 1 if family in ("torch_mha", "torch_encoder_layer") else BLOCKS
    d_mlp = 0 if family == "torch_mha" else D_MLP
    assert (spec.num_blocks, spec.num_heads, spec.d_model, spec.d_qk, spec.d_v, spec.d_mlp) == (
        blocks, HEADS, D, D // HEADS, D // HEADS, d_mlp
    )  # fmt: skip
    assert ws.flatten().shape == (1, 1, spec.num_params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_restores_every_parameter(family):
    model, _, _ = make(family)
    copy = TransformerWeightSpace.from_module(model).to_module()
    assert copy is not model
    for (name, p), q in zip(model.state_dict().items(), copy.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("scale", [2.0, 1e3])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_group_action_keeps_the_function_of_every_family(family, scale):
    """g.act(ws).to_module() computes the same outputs (float64) while the attention weights moved; scale
    1e3 gives maps with condition numbers up to 1e6."""
    model, _, run = make(family)
    ws = TransformerWeightSpace.from_module(model)
    g = random_group_element(ws, scale_range=scale, generator=torch.Generator().manual_seed(1))
    assert isinstance(g, AttentionGroupElement)
    moved = g.act(ws)
    for name in ("wq", "wk", "wv", "wo"):
        assert (getattr(moved, name) - getattr(ws, name)).abs().max() > 0.1, name
    expected = run(model)
    assert _rel(run(moved.to_module()), expected) < 1e-6
    # the source model is untouched
    assert torch.equal(run(model), expected)


@pytest.mark.parametrize("family", ["torch_mha", "timm"])
def test_head_split_matches_a_direct_evaluation(family):
    """Per-head tensors evaluate to the library's own attention output:
    sum_h softmax((x W_Q + b_Q)(x W_K + b_K)^T / sqrt(d_k)) (x W_V + b_V) W_O + b_O."""
    model, _, _ = make(family)
    ws = TransformerWeightSpace.from_module(model)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    expected = model(x, x, x, need_weights=False)[0] if family == "torch_mha" else model.blocks[0].attn(x)
    t = {k: v[0, 0, 0] for k, v in ws.tensors.items()}
    q, k, v = (torch.einsum("bnd,hdk->hbnk", x, t[f"w{n}"]) + t[f"b{n}"][:, None, None] for n in "qkv")
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = torch.einsum("hbnk,hkd->bnd", att @ v, t["wo"]) + t["bo"]
    assert _rel(out, expected) < 1e-10


def test_gpt2_split_of_the_fused_conv1d():
    """GPT-2's c_attn Conv1D is x @ [W_Q | W_K | W_V]: head h of the query is columns h*d_k:(h+1)*d_k."""
    model, _, _ = make("gpt2")
    ws = TransformerWeightSpace.from_module(model)
    c_attn = model.h[1].attn.c_attn.weight
    dk = D // HEADS
    assert torch.equal(ws.wq[0, 0, 1, 1], c_attn[:, dk : 2 * dk])
    assert torch.equal(ws.wk[0, 0, 1, 0], c_attn[:, D : D + dk])
    assert torch.equal(ws.wv[0, 0, 1, 1], c_attn[:, 2 * D + dk : 3 * D])
    assert torch.equal(ws.wo[0, 0, 1, 1], model.h[1].attn.c_proj.weight[dk:])


def test_inverse_undoes_the_action_and_composes_to_identity():
    model, _, _ = make("bert")
    ws = TransformerWeightSpace.from_modules([model, make("bert", seed=1)[0]])
    g = random_group_element(ws, scale_range=1e2, generator=torch.Generator().manual_seed(0))
    back = g.inverse().act(g.act(ws))
    for name, t in ws.tensors.items():
        assert torch.allclose(getattr(back, name), t, rtol=1e-8, atol=1e-8), name
    gi = g.inverse().inverse()
    assert torch.equal(gi.head_perm, g.head_perm) and torch.allclose(gi.qk, g.qk)


def test_per_head_invariants_are_invariant():
    """W_Q W_K^T and W_V W_O per head are unchanged up to the head permutation."""
    model, _, _ = make("timm")
    ws = TransformerWeightSpace.from_module(model)
    g = random_group_element(ws, scale_range=10.0, generator=torch.Generator().manual_seed(0))
    moved = g.act(ws)
    qk, vo = ws.wq @ ws.wk.transpose(-1, -2), ws.wv @ ws.wo
    perm = g.head_perm[0]
    for l in range(ws.spec.num_blocks):
        for h in range(ws.spec.num_heads):
            p = perm[l, h]
            assert torch.allclose((moved.wq @ moved.wk.transpose(-1, -2))[0, 0, l, h], qk[0, 0, l, p])
            assert torch.allclose((moved.wv @ moved.wo)[0, 0, l, h], vo[0, 0, l, p])


def test_from_modules_and_stack_batch_models_of_one_shape():
    a, b = make("small_vit")[0], make("small_vit", seed=3)[0]
    ws = TransformerWeightSpace.from_modules([a, b])
    assert ws.batch_size == 2
    assert torch.equal(ws[1].wq, TransformerWeightSpace.from_module(b).wq)
    # a second model built from the same config is written back independently
    out = ws.to_module(index=1)
    assert torch.equal(out.blocks[0].attn.in_proj_weight, b.blocks[0].attn.in_proj_weight)
    assert not torch.equal(out.blocks[0].attn.in_proj_weight, a.blocks[0].attn.in_proj_weight)
    with pytest.raises(ValueError, match="different shapes"):
        TransformerWeightSpace.stack([ws, TransformerWeightSpace.from_module(make("torch_mha")[0])])


def test_other_models_get_an_error_listing_the_supported_ones():
    with pytest.raises(TypeError, match="supported: .*BertModel.*GPT2Model.*timm VisionTransformer"):
        TransformerWeightSpace.from_module(nn.Sequential(nn.Linear(3, 3)))


def test_unsupported_variants_are_refused():
    with pytest.raises(ValueError, match="add_bias_kv"):
        TransformerWeightSpace.from_module(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="kdim"):
        TransformerWeightSpace.from_module(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    import timm

    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=1, num_heads=2, qk_norm=True
    )
    with pytest.raises(ValueError, match="q_norm"):
        TransformerWeightSpace.from_module(vit)


def test_a_module_without_biases_refuses_nonzero_biases():
    model, _, _ = make("timm_no_qkv_bias")
    ws = TransformerWeightSpace.from_module(model)
    assert ws.bq.abs().max() == 0
    with pytest.raises(ValueError, match="no qkv bias"):
        ws.map(lambda t: t + 1).to_module()


def test_float32_model_round_trips_in_float32():
    model = make("small_vit")[0].float()
    ws = TransformerWeightSpace.from_module(model)
    assert ws.wq.dtype == torch.float32
    g = random_group_element(ws, generator=torch.Generator().manual_seed(0))
    assert g.act(ws).wq.dtype == torch.float32


def test_group_action_with_one_token():
    """With a single token softmax is 1 and the heads reduce to x W_V W_O: still the same function."""
    model, _, _ = make("torch_mha")
    x = torch.randn(3, 1, D, dtype=torch.float64)
    ws = TransformerWeightSpace.from_module(model)
    moved = random_group_element(ws, scale_range=1e2, generator=torch.Generator().manual_seed(0)).act(ws)
    out = moved.to_module()(x, x, x, need_weights=False)[0]
    assert _rel(out, model(x, x, x, need_weights=False)[0]) < 1e-6


def test_indexing_past_the_batch_raises_and_repr_is_short():
    ws = TransformerWeightSpace.from_modules([make("small_vit")[0], make("small_vit", seed=3)[0]])
    assert ws[-2].batch_size == ws[1].batch_size == 1
    with pytest.raises(IndexError, match="out of range for a batch of 2"):
        ws[2]
    with pytest.raises(IndexError):
        ws[-3]
    assert repr(ws).startswith("TransformerWeightSpace(batch=2, channels=1, spec=")
    assert "tensor" not in repr(ws)
