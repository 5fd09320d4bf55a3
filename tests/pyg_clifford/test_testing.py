"""pyg_clifford.testing: the public equivariance tools, and CGConv under Lorentz boosts in Cl(1, 3)."""

import math

import pytest
import torch
from torch import nn

from pyg_clifford import CGConv, CliffordAlgebra, MVLinear, khop_paths
from pyg_clifford.testing import (
    act,
    assert_equivariant,
    default_versors,
    lorentz_boost,
    random_orthogonal,
    random_versor,
)


@pytest.mark.parametrize("reflect", [False, True])
def test_random_orthogonal_has_the_requested_determinant(reflect: bool) -> None:
    q = random_orthogonal(4, torch.Generator().manual_seed(0), reflect)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64))
    assert math.isclose(float(torch.linalg.det(q)), -1.0 if reflect else 1.0, abs_tol=1e-12)


def test_lorentz_boost_is_a_hyperbolic_rotation() -> None:
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0)).double()
    versor = lorentz_boost(algebra, 0.8, time_axis=0, space_axis=2)
    image = act(algebra, versor, torch.eye(4, dtype=torch.float64), "vector")  # rows: images of e_0..e_3
    assert math.isclose(float(image[0, 0]), math.cosh(0.8), rel_tol=1e-12)
    assert math.isclose(abs(float(image[0, 2])), math.sinh(0.8), rel_tol=1e-12)
    minkowski = torch.diag(torch.tensor(algebra.metric, dtype=torch.float64))
    torch.testing.assert_close(image @ minkowski @ image.T, minkowski)  # preserves the metric
    with pytest.raises(ValueError, match="opposite signature"):
        lorentz_boost(algebra, 0.8, time_axis=1, space_axis=2)


def test_random_versors_are_invertible_group_elements() -> None:
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0)).double()
    generator = torch.Generator().manual_seed(3)
    for k in (1, 2, 3):
        versor = random_versor(algebra, generator, k)
        one = algebra.geometric_product(versor, algebra.inverse_versor(versor))
        torch.testing.assert_close(one, algebra.embed_scalar(torch.ones((), dtype=torch.float64)))
    assert len(default_versors(algebra, generator)) == 2


def test_assert_equivariant_catches_a_broken_module() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    x = torch.randn(6, 3, 8, dtype=torch.float64)
    linear = MVLinear(3, 2, algebra).double()
    assert_equivariant(linear, algebra, [x], generator=torch.Generator().manual_seed(0))
    bladewise = nn.Parameter(
        torch.randn(2, 3, 8, dtype=torch.float64)
    )  # one weight per blade: not equivariant
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(
            lambda x: torch.einsum("...mi,cmi->...ci", x, bladewise),
            algebra,
            [x],
            generator=torch.Generator().manual_seed(0),
        )
    with pytest.raises(AssertionError, match="vacuous"):
        assert_equivariant(lambda x: 0 * x, algebra, [x])


@pytest.mark.parametrize("rapidity", [0.3, 1.5])
def test_cgconv_is_equivariant_under_lorentz_boosts(rapidity: float) -> None:
    """Cl(1, 3): multivector features and 4-positions boosted (and rotated, reflected), float64."""
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0)).double()
    generator = torch.Generator().manual_seed(0)
    conv = CGConv(2, 3, algebra, hops=2, edge_channels=1, hidden_channels=4).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 0, 0, 2], [1, 0, 2, 1, 3, 2, 0, 3, 2, 0]])
    x = torch.randn(4, 2, 16, dtype=torch.float64, generator=generator)
    pos = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    edge_attr = torch.randn(edge_index.size(1), 1, dtype=torch.float64, generator=generator)
    paths = khop_paths(edge_index, 4, 2)
    boosts = [lorentz_boost(algebra, rapidity, 0, axis) for axis in (1, 2, 3)]
    mixed = algebra.geometric_product(boosts[0], random_versor(algebra, generator, 3))
    assert_equivariant(
        lambda x, pos, edge_attr: conv(x, edge_index, pos=pos, edge_attr=edge_attr, paths=paths),
        algebra,
        [x, pos, edge_attr],
        ["multivector", "position", "invariant"],
        versors=[*boosts, mixed],
        generator=generator,
        atol=1e-12,
        rtol=1e-10,
    )
