"""Checkpoints of patched models: standard Mamba format, private configs, transformers' loading options."""

import importlib.util

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, MambaForCausalLM, MambaModel

import hf_mamba_refine
from hf_mamba_refine import MambaForSequenceClassification, analyze, is_patched, patch

from .conftest import tiny_config


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # move every free parameter away from its initial value
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_patched_checkpoint_is_a_standard_mamba_checkpoint(tmp_path, tokens) -> None:
    model = _perturbed(patch(MambaForCausalLM(tiny_config()), stable=True)).eval()
    expected = model(tokens).logits
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
    assert not any("parametrizations" in key for key in keys)
    assert {f"backbone.layers.{i}.mixer.x_proj.weight" for i in range(2)} <= keys
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(plain) is MambaForCausalLM and not is_patched(plain)
    assert torch.equal(plain(tokens).logits, expected)
    assert analyze(plain).regimes == ["divergent", "divergent"]


def test_state_dict_round_trip_keeps_the_free_scale(tokens) -> None:
    model = _perturbed(patch(MambaForCausalLM(tiny_config()), stable=True)).eval()
    state = model.state_dict()
    assert "backbone.layers.0.mixer.x_proj.weight" in state
    twin = patch(MambaForCausalLM(tiny_config()), stable=True).eval()
    twin.load_state_dict(state)
    for ours, theirs in zip(model.backbone.layers, twin.backbone.layers, strict=True):
        rank, n = ours.mixer.time_step_rank, ours.mixer.ssm_state_size
        free = ours.mixer.x_proj.parametrizations.weight.original
        loaded = theirs.mixer.x_proj.parametrizations.weight.original
        torch.testing.assert_close(loaded[rank : rank + n].diagonal(), free[rank : rank + n].diagonal())
    torch.testing.assert_close(twin(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_from_pretrained_through_transformers_loader(tmp_path, tokens, max_shard_size) -> None:
    model = _perturbed(patch(MambaModel(tiny_config()), stable=True, reorder=True, reorder_layers=[1])).eval()
    expected = model(tokens).last_hidden_state
    model.save_pretrained(tmp_path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(max_shard_size)
    loaded = hf_mamba_refine.from_pretrained(tmp_path)
    assert is_patched(loaded) and loaded.config.mamba_refine == model.config.mamba_refine
    scorer = loaded.layers[1].mixer.token_reorder.scorer.weight
    assert torch.equal(scorer, model.layers[1].mixer.token_reorder.scorer.weight)
    torch.testing.assert_close(loaded(tokens).last_hidden_state, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
def test_from_pretrained_honours_dtype(tmp_path, tokens, keyword) -> None:
    model = patch(MambaForCausalLM(tiny_config()), stable=True).eval()
    model.save_pretrained(tmp_path)
    loaded = hf_mamba_refine.from_pretrained(tmp_path, **{keyword: torch.bfloat16})
    assert is_patched(loaded)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert analyze(loaded).regimes == ["divergent", "divergent"]
    torch.testing.assert_close(loaded(tokens).logits.float(), model(tokens).logits, rtol=0.05, atol=0.05)


def test_from_pretrained_passes_config_overrides(tmp_path) -> None:
    patch(MambaForCausalLM(tiny_config()), stable=True).save_pretrained(tmp_path)
    loaded = hf_mamba_refine.from_pretrained(tmp_path, output_hidden_states=True)
    assert loaded.config.output_hidden_states and is_patched(loaded)


def test_earlier_checkpoints_with_free_tensors_still_load(tmp_path, tokens) -> None:
    model = _perturbed(patch(MambaForCausalLM(tiny_config()), stable=True)).eval()
    state = {key: value for key, value in model.state_dict().items() if "x_proj" not in key}
    for index, layer in enumerate(model.backbone.layers):
        free = layer.mixer.x_proj.parametrizations.weight.original.detach()
        state[f"backbone.layers.{index}.mixer.x_proj.parametrizations.weight.original"] = free
    state.pop("lm_head.weight", None)
    model.config.architectures = ["MambaForCausalLM"]
    model.config.save_pretrained(tmp_path)
    save_file({key: value.contiguous() for key, value in state.items()}, tmp_path / "model.safetensors")
    loaded = hf_mamba_refine.from_pretrained(tmp_path)
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_patch_options_stay_out_of_a_shared_config(tmp_path, tokens) -> None:
    config = tiny_config()
    patched, sibling = MambaForCausalLM(config), MambaForCausalLM(config).eval()
    patch(patched, stable=True)
    assert not hasattr(sibling.config, "mamba_refine") and not hasattr(config, "mamba_refine")
    assert patched.config is not config
    assert all(m.config is patched.config for m in patched.modules() if hasattr(m, "config"))
    sibling.save_pretrained(tmp_path)
    loaded = hf_mamba_refine.from_pretrained(tmp_path)
    assert not is_patched(loaded)
    assert torch.equal(loaded(tokens).logits, sibling(tokens).logits)


def test_reorder_on_the_backbone_of_a_generative_model_is_refused(tokens) -> None:
    lm = MambaForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="part of a MambaForCausalLM"):
        patch(lm.backbone, reorder=True)
    assert not is_patched(lm.backbone)
    patch(lm.backbone, stable=False, reorder=True, allow_causal_reorder=True)
    with pytest.raises(ValueError, match="generate\\(\\) is disabled"):
        lm.generate(tokens, max_new_tokens=2)
    hf_mamba_refine.unpatch(lm.backbone)
    assert lm.generate(tokens, max_new_tokens=2, do_sample=False).shape == (2, 14)
    classifier = MambaForSequenceClassification(tiny_config(num_labels=2))
    patch(classifier.backbone, stable=False, reorder=True)  # an encoder's backbone is fine


def test_reordering_defaults_to_one_layer() -> None:
    model = patch(MambaModel(tiny_config(num_hidden_layers=3)), stable=False, reorder=True)
    assert [hasattr(layer.mixer, "token_reorder") for layer in model.layers] == [True, False, False]
    assert model.config.mamba_refine["reorder_layers"] == [0]
    every = MambaModel(tiny_config(num_hidden_layers=3))
    patch(every, stable=False, reorder=True, reorder_layers=None)
    assert all(hasattr(layer.mixer, "token_reorder") for layer in every.layers)


def test_from_pretrained_hands_device_map_to_transformers(tmp_path, tokens) -> None:
    model = patch(MambaForCausalLM(tiny_config()), stable=True).eval()
    model.save_pretrained(tmp_path)
    if importlib.util.find_spec("accelerate") is None:  # transformers itself needs accelerate for device_map
        with pytest.raises(ValueError, match="requires `accelerate`"):
            hf_mamba_refine.from_pretrained(tmp_path, device_map="cpu")
        return
    loaded = hf_mamba_refine.from_pretrained(tmp_path, device_map="cpu")
    assert is_patched(loaded) and loaded.hf_device_map
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-6)
