"""Equivariance/invariance of every layer and model under random group elements, and parameter counts."""

import pytest
import torch
from nfn.common import network_spec_from_wsfeat
from nfn.layers import HNPLinear, NPLinear

from nfn_ext import (
    MAGEPNFN,
    MAGEPLinear,
    MonomialEquivariantNFN,
    MonomialLinear,
    MonomialNFN,
    MonomialPool,
    WeightSpace,
    random_group_element,
)
from nfn_ext.baselines import FlatMLP, NFNBaseline, StatNN
from nfn_ext.magep import polynomial_invariants
from nfn_ext.monomial import FactorisedLinear

from .helpers import make_cnn, make_mlp, max_abs, max_diff, random_space

CASES = [
    ("mlp3", "relu"),
    ("mlp3", "tanh"),
    ("mlp2", "relu"),
    ("mlp2", "tanh"),
    ("mlp4", "leaky_relu"),
    ("cnn", "relu"),
    ("cnn", "tanh"),
]


def _space(kind: str, act: str, channels: int = 1) -> WeightSpace:
    net = {
        "mlp3": lambda: make_mlp(act),
        "mlp2": lambda: make_mlp(act, (5, 7, 3)),
        "mlp4": lambda: make_mlp(act, (4, 6, 5, 7, 2)),
        "cnn": lambda: make_cnn(act),
    }[kind]()
    return random_space(net, batch=3, channels=channels)


def _group(ws: WeightSpace, scale: float = 100.0):
    return random_group_element(ws, scale_range=scale if ws.spec.group == "scale" else None)


@pytest.mark.parametrize(("kind", "act"), CASES)
@pytest.mark.parametrize("layer_cls", [MonomialLinear, MAGEPLinear])
def test_linear_layers_are_equivariant(kind: str, act: str, layer_cls: type) -> None:
    ws = _space(kind, act, channels=2)
    layer = layer_cls(ws.spec, 2, 3).double()
    g = _group(ws)
    out = layer(ws)
    assert out.channels == 3 and max_abs(out) > 1e-2
    assert max_diff(layer(g.act(ws)), g.act(out)) <= 1e-9 * max(1.0, max_abs(g.act(out)))


@pytest.mark.parametrize(("kind", "act"), CASES)
def test_equivariant_model_is_equivariant(kind: str, act: str) -> None:
    ws = _space(kind, act)
    model = MonomialEquivariantNFN(ws.spec, (4, 4)).double()
    g = _group(ws)
    expected = g.act(model(ws))
    assert max_diff(model(g.act(ws)), expected) <= 1e-9 * max(1.0, max_abs(expected))


@pytest.mark.parametrize(("kind", "act"), CASES)
@pytest.mark.parametrize("model_cls", [MonomialNFN, MAGEPNFN])
def test_invariant_models_are_invariant(kind: str, act: str, model_cls: type) -> None:
    ws = _space(kind, act)
    model = model_cls(ws.spec, (4, 4), 16, out_features=2).double()
    out = model(ws)
    moved = model(_group(ws).act(ws))
    torch.testing.assert_close(moved, out, rtol=1e-4, atol=1e-6)
    assert (out[0] - out[1]).abs().max() > 1e-6  # not a constant function


@pytest.mark.parametrize("model_cls", [MonomialNFN, MAGEPNFN])
def test_invariance_at_scale_1e4_in_float32(model_cls: type) -> None:
    ws = WeightSpace.from_modules([make_mlp("relu", (8, 12, 10, 4)) for _ in range(6)])
    model = model_cls(ws.spec, (8, 8), 32)
    out = model(ws)
    moved = model(random_group_element(ws, scale_range=1e4).act(ws))
    assert ((moved - out).abs() / out.abs().clamp_min(1e-3)).max() < 1e-4


@pytest.mark.parametrize(("kind", "act"), [("cnn", "relu"), ("mlp3", "tanh")])
def test_pool_and_polynomial_invariants(kind: str, act: str) -> None:
    ws = _space(kind, act, channels=3)
    g = _group(ws)
    pool = MonomialPool(ws.spec, 3).double()
    assert pool(ws).shape == (3, MonomialPool.num_outputs(ws.spec, 3))
    torch.testing.assert_close(pool(g.act(ws)), pool(ws), rtol=1e-9, atol=1e-12)
    psi = torch.randn(ws.spec.dims[0], ws.spec.dims[-1], dtype=torch.float64)
    torch.testing.assert_close(polynomial_invariants(g.act(ws), psi), polynomial_invariants(ws, psi))


@pytest.mark.parametrize("model_cls", [NFNBaseline, StatNN, FlatMLP])
def test_baselines_are_not_scale_invariant(model_cls: type) -> None:
    """The test can tell the difference: baselines move when the networks are rescaled."""
    ws = _space("mlp3", "relu")
    model = model_cls(ws.spec).double()
    assert (model(_group(ws).act(ws)) - model(ws)).abs().max() > 1e-4


@pytest.mark.parametrize("layer_cls", [NPLinear, HNPLinear])
def test_nfn_layers_are_permutation_but_not_scale_equivariant(layer_cls: type) -> None:
    ws = _space("mlp3", "relu", channels=2)
    layer = layer_cls(network_spec_from_wsfeat(ws.to_nfn()), 2, 3).double()

    def apply(x: WeightSpace) -> WeightSpace:
        return WeightSpace.from_nfn(layer(x.to_nfn()), x.spec)

    perm_only = random_group_element(ws, scale_range=(1.0, 1.0))
    assert max_diff(apply(perm_only.act(ws)), perm_only.act(apply(ws))) < 1e-9
    g = random_group_element(ws, scale_range=10.0)
    assert max_diff(apply(g.act(ws)), g.act(apply(ws))) > 1e-2


def _notes_count(dims: tuple[int, ...], facs: list[int], c: int, d: int, sign: bool) -> int:
    """Parameters of the notes' Monomial-NFN layer (kernel positions as extra channels), plus the
    W(1) <-> W(2) terms of two-layer sign-flip networks (``G``, ``H``)."""
    n0, nL = dims[0], dims[-1]
    a0, aL = c * facs[0], c * facs[-1]
    b0, bL = d * facs[0], d * facs[-1]
    first = b0 * a0 * n0 * n0 + b0 * c * n0 + d * a0 * n0 + d * c  # A_mnqk, B_mnk, C_mnq, D_mn
    hidden = sum(d * f * c * f + d * c for f in facs[1:-1])  # A_mn, B_mn per hidden layer
    last = bL * aL * nL * nL + d * c * nL * nL + d * nL  # A_mnpj, B_mnpj, tau_mj
    sign_terms = bL * c * nL + d * aL * nL if sign else 0  # E_mnj, F_mnp
    if sign and len(dims) == 3:
        sign_terms += a0 * n0 * bL * nL + aL * nL * b0 * n0  # G, H
    return first + hidden + last + sign_terms


@pytest.mark.parametrize(("kind", "act"), CASES)
def test_parameter_count_matches_the_notes(kind: str, act: str) -> None:
    ws = _space(kind, act)
    facs = [layer.filter_size for layer in ws.spec.layers]
    layer = MonomialLinear(ws.spec, 3, 5)
    expected = _notes_count(ws.spec.dims, facs, 3, 5, act == "tanh")
    assert sum(p.numel() for p in layer.parameters()) == expected
    # MAGEP: the same template on [W, WW, bW] and [b, beta] (F_l = C (fac_l + 2), G_l = 2C), plus the
    # hidden-bias contractions (C', 3C, n_0), the last-bias contraction (C', 3C, n_L, n_0, n_L) and the trace
    # map (C' n_L, 2C (L-1))
    n0, nL, L = ws.spec.dims[0], ws.spec.dims[-1], ws.spec.num_layers
    f_in = [3 * (f + 2) for f in facs]
    f_out = [5 * f for f in facs]
    first = (f_in[0] * n0 + 6) * (f_out[0] * n0 + 5)
    hidden = sum(a * b + 6 * 5 for a, b in zip(f_in[1:-1], f_out[1:-1], strict=True))
    last = f_in[-1] * nL * f_out[-1] * nL + 6 * nL * 5 * nL + 5 * nL
    sign = (6 * f_out[-1] * nL + f_in[-1] * nL * 5) if act == "tanh" else 0
    if act == "tanh" and L == 2:  # G, H
        sign += f_in[0] * n0 * f_out[-1] * nL + f_in[-1] * nL * f_out[0] * n0
    products = (L - 2) * 5 * 9 * n0 + 5 * nL * 9 * nL * n0 + 5 * nL * 6 * (L - 1)
    magep = MAGEPLinear(ws.spec, 3, 5)
    assert sum(p.numel() for p in magep.parameters()) == first + hidden + last + sign + products


def test_layer_input_validation() -> None:
    ws = _space("mlp3", "relu", channels=2)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        MonomialLinear(ws.spec, 3, 4).double()(ws)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        MAGEPLinear(ws.spec, 3, 4).double()(ws)


def test_stacked_magep_layers_stay_finite_on_large_weights() -> None:
    ws = WeightSpace.from_modules([make_cnn("relu") for _ in range(4)]).map(
        lambda t: 30.0 * torch.randn_like(t)
    )
    out = MAGEPNFN(ws.spec, (8, 8, 8), 16)(ws)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("kind", "act"), CASES)
@pytest.mark.parametrize("layer_cls", [MonomialLinear, MAGEPLinear])
def test_factorised_layers_are_equivariant(kind: str, act: str, layer_cls: type) -> None:
    ws = _space(kind, act, channels=2)
    layer = layer_cls(ws.spec, 2, 3, rank=2).double()
    g = _group(ws)
    out = layer(ws)
    assert max_abs(out) > 1e-2
    assert max_diff(layer(g.act(ws)), g.act(out)) <= 1e-9 * max(1.0, max_abs(g.act(out)))


def test_factorised_layer_has_fewer_parameters_and_keeps_the_per_entry_map() -> None:
    ws = random_space(make_mlp("relu", (64, 16, 16, 10)), batch=2, channels=8)
    full, low = MonomialLinear(ws.spec, 8, 8), MonomialLinear(ws.spec, 8, 8, rank=8)
    n_full, n_low = (sum(p.numel() for p in m.parameters()) for m in (full, low))
    assert n_low * 10 < n_full
    first = low.mixing.first
    assert isinstance(first, FactorisedLinear) and first.channel.shape == (8, 8)
    # with U V = 0 the first layer is the per-pixel channel mixing A (x) I, exactly
    with torch.no_grad():
        first.up.weight.zero_()
    x = torch.randn(5, 8 * 64 + 8)
    expected = torch.einsum("oc,bcn->bon", first.channel, x[:, :512].view(5, 8, 64)).flatten(1)
    out = first(x)
    torch.testing.assert_close(out[:, :512], expected)
    torch.testing.assert_close(out[:, 512:], first.extra(x[:, 512:]))
    assert "rank=8" in repr(low)
    with pytest.raises(ValueError, match="expected rank None or >= 1"):
        MonomialLinear(ws.spec, 8, 8, rank=0)


@pytest.mark.parametrize("layer_cls", [MonomialLinear, MAGEPLinear])
def test_reset_parameters_reinitialises_every_parameter(layer_cls: type) -> None:
    ws = _space("mlp3", "tanh", channels=2)
    layer = layer_cls(ws.spec, 2, 3)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(7.0)
    layer.reset_parameters()
    assert all((p != 7.0).any() for p in layer.parameters())


def test_pool_reset_parameters() -> None:
    pool = MonomialPool(_space("mlp3", "relu").spec, 3)
    with torch.no_grad():
        pool.scale.fill_(7.0)
        pool.shift.fill_(7.0)
    pool.reset_parameters()
    assert torch.equal(pool.scale, torch.ones(2, 3)) and torch.equal(pool.shift, torch.zeros(2, 3))


def test_invariant_model_factorises_only_wide_fixed_widths_by_default() -> None:
    from nfn_ext.train import build_model

    mlp = random_space(make_mlp("relu", (64, 16, 16, 10)), batch=1).spec
    cnn = random_space(make_cnn("relu"), batch=1).spec
    assert MonomialLinear(mlp, 1, 8).rank is None  # the layer's default is the complete layer
    model = MonomialNFN(mlp, (8, 8))
    mixing = model.layers[1].mixing
    assert isinstance(mixing.first, FactorisedLinear)  # 64 input pixels > 2 * rank
    assert isinstance(mixing.last_weight, torch.nn.Linear)  # 10 classes: kept complete
    n_cnn = [sum(p.numel() for p in MonomialNFN(cnn, (8, 8), rank=r).parameters()) for r in (8, None)]
    assert n_cnn[0] == n_cnn[1]  # narrow input/output: nothing to factorise
    assert build_model("monomial", mlp, rank=0).layers[0].rank is None
    assert build_model("monomial", mlp).layers[0].rank == 8


@pytest.mark.parametrize(("arch", "hidden"), [("mlp", 16), ("cnn", 8)])
def test_default_invariant_model_has_5x_fewer_parameters_than_hnp_on_the_zoos(arch: str, hidden: int) -> None:
    from nfn_ext.train import build_model, count_parameters
    from nfn_ext.zoo import make_network

    spec = WeightSpace.from_module(make_network(arch, "relu", hidden)).spec
    assert 5 * count_parameters(build_model("monomial", spec)) < count_parameters(build_model("hnp", spec))
