"""patch()/unpatch()/from_pretrained(): exactness, persistence, generation and misuse errors."""

import pytest
import torch
from torch import nn
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaForCausalLM,
    MambaModel,
)
from transformers.models.mamba import modeling_mamba

import hf_mamba_refine
from hf_mamba_refine import MambaForSequenceClassification, is_patched, patch, unpatch

from .conftest import tiny_config


def test_patch_with_refinements_off_is_exact(tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    before = model(tokens).logits
    patch(model, stable=False, reorder=False)
    assert is_patched(model)
    assert torch.equal(model(tokens).logits, before)
    assert model.config.mamba_refine["stable"] is False


def test_unpatch_keeps_constrained_weights_and_clears_config(tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    patch(model, stable=True)
    patched = model(tokens).logits
    unpatch(model)
    assert not is_patched(model) and not hasattr(model.config, "mamba_refine")
    assert isinstance(model.backbone.layers[0].mixer.x_proj.weight, nn.Parameter)
    torch.testing.assert_close(model(tokens).logits, patched)
    patch(model, stable=True)  # can be patched again once unpatched


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (MambaForCausalLM, {"stable": True}),
        (MambaForCausalLM, {"stable": True, "regime": "convergent", "stable_layers": [1]}),
        (MambaModel, {"stable": True, "reorder": True, "tau": 0.5}),
        (
            MambaForSequenceClassification,
            {"stable": False, "reorder": True, "hard": True, "reorder_layers": [0]},
        ),
    ],
)
def test_save_and_load_round_trip(tmp_path, tokens, cls, options) -> None:
    model = cls(tiny_config(num_labels=3)).eval()
    patch(model, **options)
    with torch.no_grad():  # move the free parameters away from their initial values
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    expected = model(tokens)[0]
    model.save_pretrained(tmp_path)
    loaded = hf_mamba_refine.from_pretrained(tmp_path)
    assert type(loaded) is cls and is_patched(loaded)
    assert loaded.config.mamba_refine == model.config.mamba_refine
    assert torch.equal(loaded(tokens)[0], expected)


def test_from_pretrained_of_an_unpatched_model(tmp_path, tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = hf_mamba_refine.from_pretrained(tmp_path)
    assert not is_patched(loaded)
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    from_transformers = MambaForCausalLM.from_pretrained(tmp_path)
    assert hf_mamba_refine.analyze(from_transformers).regimes == hf_mamba_refine.analyze(model).regimes


def test_generate_and_recurrent_cache_with_stable(tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    patch(model, stable=True)
    full = model(tokens).logits
    out = model(tokens[:, :-1], use_cache=True)
    step = model(tokens[:, -1:], cache=out.cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)
    mask = torch.ones_like(tokens)
    generated = model.generate(tokens, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, 16)
    assert torch.equal(generated[:, -4], full[:, -1].argmax(-1))


def test_misuse_errors() -> None:
    model = MambaForCausalLM(tiny_config())
    patch(model, stable=True)
    with pytest.raises(ValueError, match="already patched"):
        patch(model, stable=True)
    with pytest.raises(ValueError, match="expected a model containing"):
        patch(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="not patched"):
        unpatch(MambaForCausalLM(tiny_config()))
    fresh = MambaModel(tiny_config())
    with pytest.raises(ValueError, match="reorder_layers must be layer indices"):
        patch(fresh, reorder=True, reorder_layers=[5])
    with pytest.raises(ValueError, match="intermediate_size >= state_size"):
        patch(MambaModel(tiny_config(hidden_size=2, expand=1)))
    patch(fresh, stable=True)  # the refused calls left nothing behind
    falcon = FalconMambaForCausalLM(FalconMambaConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1))
    with pytest.raises(ValueError, match="FalconMamba models are not supported"):
        patch(falcon)
    mamba2 = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=10, hidden_size=16, num_heads=2, head_dim=16, n_groups=1, num_hidden_layers=1)
    )
    with pytest.raises(ValueError, match="Mamba2 models are not supported"):
        hf_mamba_refine.analyze(mamba2)


def test_reorder_is_refused_for_generation_unless_overridden(tokens) -> None:
    model = MambaForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="breaks causality"):
        patch(model, reorder=True)
    assert not is_patched(model)
    patch(model, reorder=True, allow_causal_reorder=True)
    model(tokens)
    with pytest.raises(ValueError, match="generate\\(\\) is disabled"):
        model.generate(tokens, max_new_tokens=2)
    unpatch(model)
    assert model.generate(tokens, max_new_tokens=2, do_sample=False).shape == (2, 14)


def test_reorder_changes_outputs_and_refuses_padding(tokens) -> None:
    model = MambaModel(tiny_config()).eval()
    before = model(tokens).last_hidden_state
    patch(model, stable=False, reorder=True)
    reordered = model(tokens).last_hidden_state
    assert not torch.allclose(reordered, before)
    mask = torch.ones_like(tokens)
    mask[0, -3:] = 0
    with pytest.raises(ValueError, match="unpadded"):
        model(tokens, attention_mask=mask)
    assert model(tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state.shape == (2, 12, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens).last_hidden_state, reordered)


def test_reorder_bypasses_the_fused_kernel(monkeypatch, tokens) -> None:
    """In training the fused kernel would skip x_proj (so the reordering): reordering mixers must avoid it,
    the other mixers still take it."""
    calls: list[int] = []

    def fake_inner_fn(*args, **kwargs):
        calls.append(1)

    monkeypatch.setattr(modeling_mamba, "mamba_inner_fn", fake_inner_fn)
    model = MambaForSequenceClassification(tiny_config(num_labels=2)).train()
    model(tokens)
    assert len(calls) == 2
    patch(model, stable=False, reorder=True, reorder_layers=[1])
    calls.clear()
    model(tokens).logits.sum().backward()
    assert len(calls) == 1
    assert model.training and all(m.training for m in model.modules())
    assert model.backbone.layers[1].mixer.token_reorder.scorer.weight.grad.abs().sum() > 0
