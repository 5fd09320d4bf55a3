"""analyze() against brute force and against the simulated continuous-time dynamics."""

import pytest
import torch
from transformers import MambaConfig, MambaModel

from hf_mamba_refine import TokenDynamics, analyze, classify_spectrum, plot_token_norms, symmetric_spectrum

from .conftest import tiny_config


@pytest.mark.parametrize(("n", "width"), [(1, 1), (2, 2), (3, 5), (4, 32), (5, 6)])
def test_symmetric_spectrum_matches_dense_eigenvalues(n: int, width: int) -> None:
    s_b, s_c = torch.randn(n, width, dtype=torch.float64), torch.randn(n, width, dtype=torch.float64)
    m = s_c.T @ s_b
    dense = torch.linalg.eigvalsh((m + m.T) / 2)
    ours = symmetric_spectrum(s_b, s_c)
    nonzero = dense[dense.abs() > 1e-9]
    assert torch.allclose(ours[ours.abs() > 1e-9], nonzero, atol=1e-8)
    assert ours.numel() == min(width, 2 * n)


def test_classify_spectrum() -> None:
    assert classify_spectrum(torch.tensor([0.0, 1e-9, 2.0])) == "divergent"
    assert classify_spectrum(torch.tensor([-3.0, -1e-9, 0.0])) == "convergent"
    assert classify_spectrum(torch.tensor([-1.0, 0.5])) == "mixed"


def _layer(width: int, state: int, s_b: torch.Tensor, s_c: torch.Tensor) -> MambaModel:
    """One-layer Mamba with I = width whose x_proj has the given S_B, S_C and a moderate step Delta."""
    model = MambaModel(MambaConfig(vocab_size=4, hidden_size=width, expand=1, state_size=state,
                                   num_hidden_layers=1))
    mixer = model.layers[0].mixer
    with torch.no_grad():
        rank = mixer.time_step_rank
        mixer.x_proj.weight[:rank].normal_(std=0.3)
        mixer.x_proj.weight[rank:] = torch.cat([s_b, s_c]).float()
        mixer.dt_proj.bias.fill_(0.5)
    return model


def _random_definite_pair(width: int, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """S_B, S_C (square) with S_C^T S_B = sign * (SPD) + skew, eigenvalues of the SPD part in [0.5, 2]."""
    q = torch.linalg.qr(torch.randn(width, width)).Q
    spd = q @ torch.diag(torch.empty(width).uniform_(0.5, 2.0)) @ q.T
    skew = torch.randn(width, width) * 0.3
    s_c = torch.randn(width, width) + 2 * torch.eye(width)
    s_b = torch.linalg.solve(s_c.T, sign * spd + skew - skew.T)
    return s_b, s_c


@pytest.mark.parametrize("trial", range(6))
def test_analyze_agrees_with_simulation_1d(trial: int) -> None:
    torch.manual_seed(100 + trial)
    sign = 1.0 if trial % 2 else -1.0
    magnitude = torch.empty(1).uniform_(0.5, 2.0)
    s_c = torch.randn(1, 1).sign() * torch.empty(1, 1).uniform_(0.5, 1.5)
    s_b = sign * magnitude / s_c  # mu = s_c * s_b has the chosen sign
    model = _layer(1, 1, s_b, s_c)
    expected = "divergent" if sign > 0 else "convergent"
    assert analyze(model).regimes == [expected]
    dynamics = TokenDynamics.from_mixer(model.layers[0].mixer)
    assert dynamics.simulate(torch.randn(5, 1), t_max=30.0).verdict() == expected


@pytest.mark.parametrize("trial", range(6))
def test_analyze_agrees_with_simulation_2d(trial: int) -> None:
    torch.manual_seed(200 + trial)
    sign = 1.0 if trial % 2 else -1.0
    s_b, s_c = _random_definite_pair(2, sign)
    model = _layer(2, 2, s_b, s_c)
    expected = "divergent" if sign > 0 else "convergent"
    assert analyze(model).regimes == [expected]
    dynamics = TokenDynamics.from_mixer(model.layers[0].mixer)
    assert dynamics.simulate(torch.randn(5, 2), t_max=30.0).verdict() == expected


def test_analyze_reports_every_layer_and_input_deltas(tokens: torch.Tensor) -> None:
    model = MambaModel(tiny_config(num_hidden_layers=3))
    report = analyze(model)
    assert [layer.layer for layer in report.layers] == [0, 1, 2]
    assert report.delta_source == "bias"
    measured = analyze(model, input_ids=tokens)
    assert measured.delta_source == "inputs"
    assert all(layer.delta_min > 0 for layer in measured.layers)
    bias_means = [layer.delta_mean for layer in report.layers]
    assert [layer.delta_mean for layer in measured.layers] != bias_means
    text = str(report)
    assert text.count("\n") == 4 and "regime" in text


def test_delta_statistics_from_the_bias_are_those_of_softplus_of_the_bias() -> None:
    model = MambaModel(tiny_config())
    with torch.no_grad():  # negative and positive biases, where softplus differs from the identity
        for index, layer in enumerate(model.layers):
            layer.mixer.dt_proj.bias.copy_(torch.linspace(-4.0, 2.0 + index, layer.mixer.intermediate_size))
    report = analyze(model)
    assert report.delta_source == "bias"
    for layer, item in zip(model.layers, report.layers, strict=True):
        delta = torch.log1p(torch.exp(layer.mixer.dt_proj.bias.detach().double()))  # softplus, written out
        assert item.delta_mean == pytest.approx(float(delta.mean()), rel=1e-6)
        assert item.delta_std == pytest.approx(float(delta.std()), rel=1e-5)
        assert item.delta_min == pytest.approx(float(delta.min()), rel=1e-6)
        assert item.delta_max == pytest.approx(float(delta.max()), rel=1e-6)


def test_plot_token_norms_writes_a_figure(tmp_path) -> None:
    dynamics = TokenDynamics(torch.eye(2), torch.eye(2), torch.zeros(2), delta_bias=0.5)
    trajectory = dynamics.simulate(torch.randn(4, 2), t_max=5.0)
    path = plot_token_norms(trajectory, tmp_path / "norms.png")
    assert path.exists() and path.stat().st_size > 1000


def test_simulator_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="expected s_b"):
        TokenDynamics(torch.eye(2), torch.eye(3), torch.zeros(2))
    dynamics = TokenDynamics(torch.eye(2), torch.eye(2), torch.zeros(2))
    with pytest.raises(ValueError, match="expected x0"):
        dynamics.simulate(torch.randn(4, 3))
