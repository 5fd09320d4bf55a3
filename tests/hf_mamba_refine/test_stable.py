"""The sign-definite reparametrisation: regimes during training, projection, kernel-path reach."""

import pytest
import torch
from torch.nn.utils import parametrize
from transformers import MambaForCausalLM
from transformers.models.mamba import modeling_mamba

from hf_mamba_refine import SignDefiniteProjection, analyze, patch, project_stable, unpatch

from .conftest import tiny_config


@pytest.mark.parametrize(("regime", "sign"), [("divergent", 1.0), ("convergent", -1.0)])
def test_patched_layers_stay_definite_through_training(regime: str, sign: float, tokens) -> None:
    model = MambaForCausalLM(tiny_config(num_hidden_layers=3))
    with torch.no_grad():  # start from weights that are certainly not sign-definite
        for layer in model.backbone.layers:
            layer.mixer.x_proj.weight.normal_()
    assert set(analyze(model).regimes) == {"mixed"}
    patch(model, stable=True, regime=regime)
    assert analyze(model).regimes == [regime] * 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)
    for _ in range(4):
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = analyze(model)
    assert report.regimes == [regime] * 3
    for layer in report.layers:
        assert sign * float(layer.eigenvalues.max() if sign > 0 else layer.eigenvalues.min()) > 0
    assert all(parametrize.is_parametrized(layer.mixer.x_proj, "weight") for layer in model.backbone.layers)


def test_no_new_parameters() -> None:
    model = MambaForCausalLM(tiny_config())
    count = sum(p.numel() for p in model.parameters())
    patch(model, stable=True)
    assert sum(p.numel() for p in model.parameters()) == count


def test_projection_is_closest_point_and_idempotent() -> None:
    torch.manual_seed(3)
    projection = SignDefiniteProjection(time_step_rank=3, state_size=4)
    weight = torch.randn(11, 9, dtype=torch.float64)
    free = projection.right_inverse(weight)
    projected = projection(free)
    assert torch.equal(projected[:3], weight[:3])  # S_delta untouched
    assert torch.allclose(projection(projection.right_inverse(projected)), projected, atol=1e-10)
    distance = (projected - weight).norm()
    for _ in range(300):  # no nearby constrained weight is closer
        nearby = projection(free + 1e-2 * torch.randn_like(free))
        assert (nearby - weight).norm() >= distance - 1e-9


def test_projection_rejects_bad_shapes() -> None:
    projection = SignDefiniteProjection(time_step_rank=2, state_size=4)
    with pytest.raises(ValueError, match="expected an x_proj weight"):
        projection(torch.randn(9, 8))
    with pytest.raises(ValueError, match="I >= 4"):
        projection(torch.randn(10, 3))
    with pytest.raises(ValueError, match="regime"):
        SignDefiniteProjection(2, 4, regime="sideways")


def test_project_stable_then_patch_keeps_outputs(tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.x_proj.weight.normal_()
    before = model(tokens).logits
    report = project_stable(model)
    assert report.layers == [0, 1] and all(change > 0 for change in report.relative_change)
    assert analyze(model).regimes == ["divergent", "divergent"]
    projected = model(tokens).logits
    assert not torch.allclose(before, projected)
    patch(model, stable=True, stable_init="project")
    torch.testing.assert_close(model(tokens).logits, projected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="already constrained"):
        project_stable(model)


def test_fused_kernel_path_receives_the_constrained_weight(monkeypatch, tokens) -> None:
    """Stand-in for mamba-ssm's fused kernel: it must be handed the parametrised x_proj weight."""
    seen: list[torch.Tensor] = []

    def fake_inner_fn(xz, conv_w, conv_b, x_proj_weight, *args, **kwargs):
        seen.append(x_proj_weight.detach().clone())

    monkeypatch.setattr(modeling_mamba, "mamba_inner_fn", fake_inner_fn)
    model = MambaForCausalLM(tiny_config()).train()
    patch(model, stable=True)
    model(tokens)
    assert len(seen) == 2
    for layer, weight in zip(model.backbone.layers, seen, strict=True):
        torch.testing.assert_close(weight, layer.mixer.x_proj.weight.detach())
        rank, n = layer.mixer.time_step_rank, layer.mixer.ssm_state_size
        s_b, s_c = weight[rank : rank + n], weight[rank + n :]
        assert torch.linalg.eigvalsh((s_c.T @ s_b + s_b.T @ s_c) / 2).min() > -1e-4


def _scales(model: MambaForCausalLM) -> torch.Tensor:
    """The diagonal scale ``d`` of every layer, ``[layers, N]`` (the diagonal of S_B, since S_C's is 1)."""
    rows = []
    for layer in model.backbone.layers:
        rank, n = layer.mixer.time_step_rank, layer.mixer.ssm_state_size
        rows.append(layer.mixer.x_proj.weight[rank : rank + n].diagonal().detach().clone())
    return torch.stack(rows)


@pytest.mark.parametrize(("regime", "sign"), [("divergent", 1.0), ("convergent", -1.0)])
def test_fresh_stable_patch_lets_the_scale_d_learn(regime: str, sign: float, tokens) -> None:
    """As in the reference, d = softplus(u) + d_min starts near softplus(0) + 0.7, not at the floor where
    softplus has no gradient, and every d moves under AdamW."""
    torch.manual_seed(0)
    model = MambaForCausalLM(tiny_config())
    patch(model, stable=True, regime=regime)
    before = sign * _scales(model)
    assert before.min() > 0.7 + 0.4 and before.max() < 0.7 + 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = (sign * _scales(model) - before).abs()
    assert moved.min() > 1e-3, moved


def test_project_init_is_exact_on_constrained_weights(tokens) -> None:
    model = MambaForCausalLM(tiny_config()).eval()
    patch(model, stable=True)
    constrained = model(tokens).logits
    weights = [layer.mixer.x_proj.weight.detach().clone() for layer in model.backbone.layers]
    unpatch(model)
    patch(model, stable=True, stable_init="project")
    for layer, weight in zip(model.backbone.layers, weights, strict=True):
        torch.testing.assert_close(layer.mixer.x_proj.weight, weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model(tokens).logits, constrained, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stable_init must be one of"):
        patch(MambaForCausalLM(tiny_config()), stable=True, stable_init="zeros")
