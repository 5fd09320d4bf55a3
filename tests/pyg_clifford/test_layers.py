"""Every multivector layer commutes with the Clifford-group action (rotations and reflections)."""

import math

import pytest
import torch
from torch import nn

from pyg_clifford import (
    CEMLP,
    CliffordAlgebra,
    MVGradeNorm,
    MVLayerNorm,
    MVLinear,
    MVSiLU,
    SteerableGeometricProduct,
)
from pyg_clifford.layers import grade_tables
from pyg_clifford.testing import assert_equivariant

CHANNELS = 5


def build(kind: str, algebra: CliffordAlgebra) -> nn.Module:
    layers = {
        "linear": lambda: MVLinear(CHANNELS, 3, algebra),
        "silu": lambda: MVSiLU(CHANNELS, algebra),
        "gradenorm": lambda: MVGradeNorm(CHANNELS, algebra),
        "gp": lambda: SteerableGeometricProduct(CHANNELS, algebra),
        "layernorm": lambda: MVLayerNorm(CHANNELS, algebra),
        "cemlp": lambda: CEMLP(CHANNELS, 6, 4, algebra, num_layers=2),
    }
    layer = layers[kind]().double()
    with torch.no_grad():  # move every parameter away from its initial value so that no weight is trivial
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def check(layer: nn.Module, algebra: CliffordAlgebra, generator: torch.Generator) -> None:
    """The library's own check: random rotation and reflection (Euclidean) or 2- and 3-vector versors."""
    x = torch.randn(7, CHANNELS, algebra.num_blades, dtype=torch.float64, generator=generator)
    assert_equivariant(layer, algebra, [x], generator=generator, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "silu", "gradenorm", "gp", "layernorm", "cemlp"])
@pytest.mark.parametrize("metric", [(1.0, 1.0, 1.0), (1.0, 1.0), (1.0, -1.0, -1.0, -1.0)])
def test_layers_are_equivariant(kind: str, metric: tuple[float, ...]) -> None:
    algebra = CliffordAlgebra(metric).double()
    generator = torch.Generator().manual_seed(len(metric))
    check(build(kind, algebra), algebra, generator)


class BladewiseLinear(nn.Module):
    """A channel mix with one weight per blade (not per grade): not equivariant."""

    def __init__(self, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(CHANNELS, CHANNELS, algebra.num_blades, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...mi,cmi->...ci", x, self.weight)


def test_equivariance_check_detects_a_broken_layer() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    with pytest.raises(AssertionError):
        check(BladewiseLinear(algebra), algebra, torch.Generator().manual_seed(0))


def test_steerable_product_has_one_weight_per_grade_triplet() -> None:
    layer = SteerableGeometricProduct(CHANNELS, CliffordAlgebra((1.0, 1.0, 1.0)))
    assert layer.num_triplets == 20  # CGENN: 20 non-zero grade triplets in Cl(3, 0)
    assert layer.weight.shape == (CHANNELS, 20)


@pytest.mark.parametrize("kind", ["linear", "silu", "gradenorm", "gp", "layernorm", "cemlp"])
def test_reset_parameters_restores_the_initialisation(kind: str) -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    layer = build(kind, algebra)
    x = torch.randn(4, CHANNELS, 8, dtype=torch.float64)
    perturbed = layer(x)
    layer.reset_parameters()
    for name, p in layer.named_parameters():
        if name.endswith(("alpha", "scale")):
            assert torch.all(p == 1), name
        elif name.endswith(("beta", "bias", ".a")) or name == "a":
            assert torch.all(p == 0), name
    assert not torch.allclose(layer(x), perturbed)


def test_linear_rejects_wrong_shapes() -> None:
    layer = MVLinear(CHANNELS, 2, CliffordAlgebra((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        layer(torch.randn(3, CHANNELS, 4))
    with pytest.raises(ValueError, match=rf"\[\.\.\., {CHANNELS}, 8\]"):
        layer(torch.randn(3, CHANNELS + 1, 8))
    with pytest.raises(ValueError, match="num_layers >= 1"):
        CEMLP(2, 2, 2, CliffordAlgebra((1.0, 1.0)), num_layers=0)


@pytest.mark.parametrize("metric", [(1.0, 1.0, 1.0), (1.0, -1.0, -1.0, -1.0)])
def test_steerable_product_equals_weighted_grade_products(metric: tuple[float, ...]) -> None:
    r"""z = sum over grade triplets of w_{c,t} <<x>_{g_i} <y>_{g_k}>_{g_j}, with the algebra's own product."""
    algebra = CliffordAlgebra(metric).double()
    layer = build("gp", algebra)
    x = torch.randn(3, CHANNELS, algebra.num_blades, dtype=torch.float64)
    y = layer.normalize(layer.linear_right(x))
    g, num = algebra.blade_grades, algebra.num_grades
    # the layer's weights are ordered by the code (g_i * G + g_j) * G + g_k of the triplets that occur
    codes = torch.unique((g[:, None] * num + g[None, :]) * num + g[algebra.right_index]).tolist()
    z = torch.zeros_like(x)
    for t, code in enumerate(codes):
        gi, gj, gk = (
            code // algebra.num_grades**2,
            (code // algebra.num_grades) % algebra.num_grades,
            code % algebra.num_grades,
        )
        product = algebra.geometric_product(algebra.grade_projection(x, gi), algebra.grade_projection(y, gk))
        z = z + layer.weight[:, t, None] * algebra.grade_projection(product, gj)
    torch.testing.assert_close(layer(x), (layer.linear_left(x) + z) / math.sqrt(2.0))


def test_grade_tables_are_cached_on_their_algebra_per_dtype():
    alg, other = CliffordAlgebra((1.0, 1.0, 1.0)), CliffordAlgebra((1.0, 1.0, 1.0))
    tables = grade_tables(alg, torch.float32)
    assert grade_tables(alg, torch.float32) is tables
    assert grade_tables(alg, torch.float64).signed.dtype == torch.float64
    assert len(alg.table_cache) == 2 and other.table_cache == {}
