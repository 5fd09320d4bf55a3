"""The weighted geometric product (gradcheck, cached tables) and each layer against a direct evaluation of its
formula, in float64, float32 and bfloat16."""

import math

import pytest
import torch

from pyg_clifford import (
    CGEGNN,
    CliffordAlgebra,
    MVGradeNorm,
    MVLayerNorm,
    MVLinear,
    MVSiLU,
    SteerableGeometricProduct,
    product,
)
from pyg_clifford.layers import (
    _GradeGate,
    _GradeNormalise,
    _LayerNormalise,
    from_blade_major,
    grade_tables,
    to_blade_major,
)
from pyg_clifford.product import (
    _TILE,
    GatherWeightedProduct,
    WeightedGeometricProduct,
    _PairTiles,
    product_tables,
)

METRICS = [(1.0, 1.0, 1.0), (1.0, -1.0, -1.0, -1.0), (0.5, 2.0)]


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def assert_same_values_and_gradients(out, reference, inputs, grad):
    """``out`` equals ``reference``, and so do their vector-Jacobian products with ``grad`` for ``inputs``."""
    torch.testing.assert_close(out, reference)
    got = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    expected = torch.autograd.grad(reference, inputs, grad, retain_graph=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("metric", METRICS)
def test_weighted_product_passes_gradcheck(metric: tuple[float, ...]) -> None:
    algebra = CliffordAlgebra(metric)
    layer = SteerableGeometricProduct(3, algebra).double()
    blades, index = algebra.num_blades, layer.product_index()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, blades, 3, 4, dtype=torch.float64, generator=generator).requires_grad_().unbind()
    weight = torch.randn(3, layer.num_triplets, dtype=torch.float64, generator=generator, requires_grad=True)

    def product(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        tables = product_tables(weight.detach(), index, blades, 0.7)
        return WeightedGeometricProduct.apply(x, y, weight, tables, index, 0.7)

    assert torch.autograd.gradcheck(product, (x, y, weight))
    assert torch.autograd.gradgradcheck(product, (x, y, weight))


@pytest.mark.parametrize("metric", METRICS)
def test_compiled_graph_product_passes_gradcheck(metric: tuple[float, ...]) -> None:
    """The product used inside torch.compile graphs (a backward of three signed gathers of the gradient)."""
    algebra = CliffordAlgebra(metric)
    layer = SteerableGeometricProduct(3, algebra).double()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, algebra.num_blades, 3, 4, dtype=torch.float64, generator=generator).unbind()
    weight = torch.randn(3, layer.num_triplets, dtype=torch.float64, generator=generator)
    inputs = (x.requires_grad_(), y.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, y, w: GatherWeightedProduct.apply(x, y, w, *layer.product_index(), 0.7), inputs
    )


@pytest.mark.parametrize("metric", METRICS)
def test_fused_invariant_layers_pass_gradcheck(metric: tuple[float, ...]) -> None:
    """The hand-written backward passes of MVSiLU, MVGradeNorm and MVLayerNorm (each saves only its input),
    and their second derivatives."""
    algebra = CliffordAlgebra(metric)
    tables = grade_tables(algebra, torch.float64)
    generator = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()

    x = rand(algebra.num_blades, 3, 5)
    alpha, beta, a = (
        rand(algebra.num_grades, 3, 1),
        rand(algebra.num_grades, 3, 1),
        rand(algebra.num_grades, 3, 1),
    )
    squares = algebra.blade_squares(torch.float64)
    checks = [
        (lambda x, al, be: _GradeGate.apply(x, al, be, tables), (x, alpha, beta)),
        (lambda x, a: _GradeNormalise.apply(x, a, tables, 1e-12), (x, a)),
        (lambda x, s: _LayerNormalise.apply(x, s, squares, 1e-6), (x, rand(3, 1))),
    ]
    for function, inputs in checks:
        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)


def test_weighted_product_equals_the_signed_gather() -> None:
    r"""z_{c,j} = s sum_i sigma_ij w_{c,t(i,j)} x_{c,i} y_{c,i xor j}, evaluated with explicit loops."""
    algebra = CliffordAlgebra((1.0, -1.0, 0.5)).double()
    layer = perturbed(SteerableGeometricProduct(2, algebra).double())
    x, y = torch.randn(2, 8, 2, 3, dtype=torch.float64).unbind()
    tables = product_tables(layer.weight.detach(), layer.product_index(), 8, 0.7)
    z = WeightedGeometricProduct.apply(x, y, layer.weight, tables, layer.product_index(), 0.7)
    expected = torch.zeros_like(z)
    triplet = layer.triplet_index.view(8, 8)
    for i in range(8):
        for j in range(8):
            k = int(algebra.right_index[i, j])
            weight = layer.weight[:, triplet[i, j]] * algebra.sign[i, j] * 0.7
            expected[j] += weight[:, None] * x[i] * y[k]
    torch.testing.assert_close(z, expected)


def test_compiled_gather_formulation_equals_the_product_function() -> None:
    """Inside torch.compile the layer uses gather_product; it must equal the eager function, gradients too."""
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0)).double()
    layer = perturbed(SteerableGeometricProduct(3, algebra).double())
    x, y = torch.randn(2, 16, 3, 5, dtype=torch.float64).requires_grad_().unbind()
    scale = 1 / math.sqrt(2)
    eager = WeightedGeometricProduct.apply(
        x, y, layer.weight, layer.product_tables(), layer.product_index(), scale
    )
    gathered = layer.gather_product(x, y, scale)
    assert_same_values_and_gradients(gathered, eager, (x, y, layer.weight), torch.randn_like(eager))


def test_product_tables_follow_parameter_updates() -> None:
    """The cached tables are rebuilt after an optimiser step (and only then)."""
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    layer = SteerableGeometricProduct(4, algebra)
    x = torch.randn(5, 4, 8)
    first = layer.product_tables()
    assert layer.product_tables() is first
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().sum().backward()
    optimizer.step()
    assert layer.product_tables() is not first
    fresh = SteerableGeometricProduct(4, algebra)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), fresh(x))


def test_mvlinear_formula() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    layer = perturbed(MVLinear(3, 2, algebra).double())
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    expected = torch.zeros(4, 2, 8, dtype=torch.float64)
    for blade in range(8):
        grade = int(algebra.blade_grades[blade])
        expected[..., blade] = x[..., blade] @ layer.weight[:, :, grade].T
    expected[..., 0] += layer.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("metric", [(1.0, 1.0, 1.0), (1.0, -1.0, -1.0, -1.0)])
def test_mvsilu_formula(metric: tuple[float, ...]) -> None:
    r"""<x_c>_0 gated by sigmoid(alpha x0 + beta) (x0, not x0^2); grade g >= 1 by
    sigmoid(alpha q(<x>_g) + beta)."""
    algebra = CliffordAlgebra(metric).double()
    layer = perturbed(MVSiLU(3, algebra).double())
    x = torch.randn(5, 3, algebra.num_blades, dtype=torch.float64)
    expected = torch.empty_like(x)
    for blade in range(algebra.num_blades):
        grade = int(algebra.blade_grades[blade])
        projected = algebra.quadratic_form(algebra.grade_projection(x, grade))
        invariant = x[..., 0] if grade == 0 else projected
        gate = torch.sigmoid(layer.alpha[:, grade] * invariant + layer.beta[:, grade])
        expected[..., blade] = gate * x[..., blade]
    torch.testing.assert_close(layer(x), expected)


def test_gradenorm_and_layernorm_formulas() -> None:
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0)).double()
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    norm = perturbed(MVGradeNorm(3, algebra).double())
    expected = torch.empty_like(x)
    for blade in range(16):
        grade = int(algebra.blade_grades[blade])
        size = (algebra.quadratic_form(algebra.grade_projection(x, grade)).abs() + 1e-12).sqrt()
        expected[..., blade] = x[..., blade] / (torch.sigmoid(norm.a[:, grade]) * (size - 1) + 1)
    torch.testing.assert_close(norm(x), expected)
    layer_norm = perturbed(MVLayerNorm(3, algebra).double())
    sizes = (algebra.quadratic_form(x).abs() + 1e-12).sqrt()  # [5, 3]
    expected = layer_norm.scale[:, None] * x / (sizes.mean(-1)[:, None, None] + layer_norm.eps)
    torch.testing.assert_close(layer_norm(x), expected)


def test_blade_major_round_trip_and_empty_inputs() -> None:
    x = torch.randn(2, 3, 4, 8)
    assert to_blade_major(x).shape == (8, 4, 6)
    torch.testing.assert_close(from_blade_major(to_blade_major(x), x.shape[:-2]), x)
    layer = SteerableGeometricProduct(4, CliffordAlgebra((1.0, 1.0, 1.0)))
    assert layer(torch.randn(0, 4, 8)).shape == (0, 4, 8)


def test_layout_conversions_are_transpositions_with_contiguous_gradients() -> None:
    """to/from_blade_major equal the permutation (values, gradients, second derivatives), and hand on
    contiguous gradients (a permuted view would make every batched matmul behind them copy it)."""
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    blade_major = to_blade_major(x)
    torch.testing.assert_close(blade_major, x.reshape(6, 4, 8).permute(2, 1, 0))
    assert blade_major.is_contiguous()
    (grad,) = torch.autograd.grad(from_blade_major(blade_major, x.shape[:-2]).square().sum(), blade_major)
    assert grad.is_contiguous()
    torch.testing.assert_close(grad, 2 * blade_major)
    assert torch.autograd.gradcheck(to_blade_major, (x,))
    leaf = blade_major.detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: from_blade_major(t.square(), (6,)), (leaf,))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_low_precision_forward_agrees_with_float64(dtype: torch.dtype, tolerance: float) -> None:
    """CGEGNN hops 2 forward in float32 / bfloat16 against the same weights in float64 (relative error of the
    predicted displacement)."""
    torch.manual_seed(0)
    model = perturbed(CGEGNN(1, 1, hidden_channels=8, num_layers=2, hops=2, mlp_layers=2), seed=1)
    edge_index = torch.stack(torch.nonzero(~torch.eye(5, dtype=torch.bool)).t().unbind())
    pos, vel = torch.randn(2, 5, 3)
    charge = torch.randn(5, 1)
    inputs = (pos, edge_index, vel, charge, charge[edge_index[0]] * charge[edge_index[1]])

    def displacement(model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        args = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
        return (model.to(dtype)(*args)[0] - args[0]).double()

    reference = displacement(model, torch.float64)
    low = displacement(model, dtype)
    error = (low - reference).norm() / reference.norm()
    assert error < tolerance, error
    assert math.isfinite(float(error))


def test_tiled_product_equals_the_untiled_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager product tiles the batch axis (several tiles and a shorter last one here); values and all
    three gradients equal the untiled differentiable formula, also for non-contiguous operands and a
    non-contiguous output gradient."""
    monkeypatch.setattr(product, "_TILE", 64 * 3 * 4)  # tiles of 4 columns: 4, 4, 4, 1
    algebra = CliffordAlgebra((1.0, -1.0, 0.5)).double()
    layer = perturbed(SteerableGeometricProduct(3, algebra).double())
    index = layer.product_index()
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 13, 3, 8, dtype=torch.float64, generator=generator).unbind()
    x, y = x.permute(2, 1, 0).requires_grad_(), y.permute(2, 1, 0).requires_grad_()  # [8, 3, 13], strided
    grad = torch.randn(13, 3, 8, dtype=torch.float64, generator=generator).permute(2, 1, 0)
    tables = product_tables(layer.weight.detach(), index, 8, 0.7)
    tiled = WeightedGeometricProduct.apply(x, y, layer.weight, tables, index, 0.7)
    untiled = product._signed_product(x, y, product_tables(layer.weight, index, 8, 0.7).forward, index.right)
    assert_same_values_and_gradients(tiled, untiled, (x, y, layer.weight), grad)


def test_fused_layers_accept_non_contiguous_blade_major_inputs() -> None:
    """forward_blade_major of the fused layers on a permuted (non-contiguous) input equals the same input
    made contiguous, gradients too."""
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    base = torch.randn(7, 3, 8, dtype=torch.float64)
    for layer in (MVSiLU(3, algebra), MVGradeNorm(3, algebra), MVLayerNorm(3, algebra)):
        layer = perturbed(layer.double())
        strided = base.permute(2, 1, 0).requires_grad_()
        dense = base.permute(2, 1, 0).contiguous().requires_grad_()
        out_strided, out_dense = layer.forward_blade_major(strided), layer.forward_blade_major(dense)
        torch.testing.assert_close(out_strided, out_dense)
        grad = torch.randn_like(out_dense)
        torch.testing.assert_close(
            torch.autograd.grad(out_strided, strided, grad)[0], torch.autograd.grad(out_dense, dense, grad)[0]
        )


def test_product_gradients_for_a_subset_of_inputs() -> None:
    """Frozen weights or operands: the eager backward computes only what is asked, and it matches."""
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    layer = perturbed(SteerableGeometricProduct(2, algebra).double())
    index = layer.product_index()
    tables = product_tables(layer.weight.detach(), index, 8, 0.7)
    x, y = torch.randn(2, 8, 2, 5, dtype=torch.float64).unbind()
    for wanted in ((0,), (1,), (2,), (0, 2)):
        inputs = [x.clone(), y.clone(), layer.weight.detach().clone()]
        for position in wanted:
            inputs[position].requires_grad_()
        out = WeightedGeometricProduct.apply(*inputs, tables, index, 0.7)
        got = torch.autograd.grad(out.square().sum(), [inputs[p] for p in wanted])
        reference = [t.detach().clone().requires_grad_() for t in inputs]
        full = WeightedGeometricProduct.apply(*reference, tables, index, 0.7)
        expected = torch.autograd.grad(full.square().sum(), [reference[p] for p in wanted])
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)


def test_product_is_tiled_for_the_cpu_cache_only():
    """CPU tiles keep the pair buffer at 1 MiB; other devices (meta stands in for a GPU) get one tile."""
    cpu = _PairTiles(torch.empty(8, 28, 1000))
    assert cpu.width * 8 * 8 * 28 <= _TILE < (cpu.width + 1) * 8 * 8 * 28
    assert _PairTiles(torch.empty(8, 28, 1000, device="meta")).width == 1000
