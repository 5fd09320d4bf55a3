"""The monomial group action preserves the function of real networks, and only the right group does."""

import pytest
import torch

from nfn_ext import MonomialGroupElement, WeightSpace, random_group_element

from .helpers import make_cnn, make_mlp, max_diff


def _inputs(kind: str) -> torch.Tensor:
    return (
        torch.randn(16, 5, dtype=torch.float64)
        if kind == "mlp"
        else torch.randn(16, 2, 8, 8, dtype=torch.float64)
    )


def _batch(kind: str, act: str) -> WeightSpace:
    nets = [(make_mlp(act) if kind == "mlp" else make_cnn(act)) for _ in range(4)]
    return WeightSpace.from_modules(nets).map(lambda t: t.double())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize(
    ("act", "scale_range"), [("relu", 100.0), ("leaky_relu", (0.2, 5.0)), ("tanh", None)]
)
def test_action_preserves_function(kind: str, act: str, scale_range: float | None) -> None:
    ws = _batch(kind, act)
    g = random_group_element(ws, scale_range=scale_range)
    moved = g.act(ws)
    assert max_diff(moved, ws) > 1e-2  # the weights really moved
    x = _inputs(kind)
    for i in range(ws.batch_size):
        a, b = ws.to_module(i).eval(), moved.to_module(i).eval()
        torch.testing.assert_close(b(x), a(x), rtol=1e-10, atol=1e-10)


def test_sign_flips_are_drawn_and_permutations_are_permutations() -> None:
    ws = _batch("mlp", "tanh")
    g = random_group_element(ws)
    for perm, scale in zip(g.permutations, g.scales, strict=True):
        assert torch.equal(perm.sort(dim=1).values, torch.arange(perm.shape[1]).expand_as(perm))
        assert set(scale.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_wrong_group_changes_the_function(kind: str) -> None:
    """Scalings are not a symmetry of tanh networks and sign flips are not one of ReLU networks."""
    x = _inputs(kind)
    tanh_ws = _batch(kind, "tanh")[:1]
    moved = random_group_element(tanh_ws, group="scale", scale_range=(2.0, 4.0), permute=False).act(tanh_ws)
    assert (moved.to_module()(x) - tanh_ws.to_module()(x)).abs().max() > 1e-3
    relu_ws = _batch(kind, "relu")[:1]
    flips = MonomialGroupElement(
        tuple(torch.arange(n)[None] for n in relu_ws.spec.dims[1:-1]),
        tuple(-torch.ones(1, n, dtype=torch.float64) for n in relu_ws.spec.dims[1:-1]),
    )
    assert (flips.act(relu_ws).to_module()(x) - relu_ws.to_module()(x)).abs().max() > 1e-3


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_inverse_undoes_the_action(act: str) -> None:
    ws = _batch("cnn", act)
    g = random_group_element(ws, scale_range=1e3 if act == "relu" else None)
    assert max_diff(g.inverse().act(g.act(ws)), ws) < 1e-12
    assert max_diff(g.act(g.inverse().act(ws)), ws) < 1e-12


def test_random_group_element_validates() -> None:
    ws = _batch("mlp", "tanh")
    with pytest.raises(ValueError, match="no scalings"):
        random_group_element(ws, scale_range=10.0)
    with pytest.raises(ValueError, match="expected group"):
        random_group_element(ws, group="rotation")
    relu = _batch("mlp", "relu")
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        random_group_element(relu, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="does not match"):
        random_group_element(relu[:2]).act(relu)


def test_scales_cover_the_requested_range() -> None:
    ws = WeightSpace.from_modules([make_mlp("relu", (3, 200, 3)) for _ in range(50)])
    scales = random_group_element(ws, scale_range=1e4).scales[0]
    assert scales.min() >= 1e-4 and scales.max() <= 1e4
    assert scales.min() < 1e-3 and scales.max() > 1e3


def test_single_element_broadcasts_over_a_batch() -> None:
    ws = _batch("cnn", "relu")
    g = random_group_element(ws[:1], scale_range=10.0)
    expected = WeightSpace.stack([g.act(ws[i]) for i in range(ws.batch_size)])
    assert max_diff(g.act(ws), expected) == 0.0


def test_scale_bounds_shared_by_both_groups():
    from nfn_ext.transformer_group import scale_bounds

    assert scale_bounds(None, (0.5, 2.0)) == (0.5, 2.0)
    assert scale_bounds(4, (0.5, 2.0)) == (0.25, 4.0)
    assert scale_bounds((0.3, 0.7), (0.5, 2.0)) == (0.3, 0.7)
    for bad in ((2.0, 1.0), (0.0, 1.0), -2.0):
        with pytest.raises(ValueError, match="0 < lo <= hi"):
            scale_bounds(bad, (0.5, 2.0))
