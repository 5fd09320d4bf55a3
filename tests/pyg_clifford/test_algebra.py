"""CliffordAlgebra against the `clifford` package, and the versor (Clifford-group) action."""

import clifford
import numpy as np
import pytest
import torch

from pyg_clifford import CliffordAlgebra
from pyg_clifford.testing import random_orthogonal

SIGNATURES = [(1.0, 1.0), (1.0, 1.0, 1.0), (1.0, -1.0, -1.0, -1.0), (-1.0, 1.0, 1.0)]


def oracle(metric: tuple[float, ...]):
    return clifford.Cl(sig=list(metric))[0]


@pytest.mark.parametrize("metric", SIGNATURES)
def test_operations_match_clifford(metric: tuple[float, ...]) -> None:
    algebra = CliffordAlgebra(metric)
    layout = oracle(metric)
    assert algebra.blade_names[1:] == list(layout.names)[1:]
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((2, 16, algebra.num_blades))
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    product = algebra.geometric_product(a, b).numpy()
    for row in range(a_np.shape[0]):
        ma, mb = layout.MultiVector(a_np[row]), layout.MultiVector(b_np[row])
        np.testing.assert_allclose(product[row], (ma * mb).value, atol=1e-12)
        np.testing.assert_allclose(algebra.reverse(a[row]).numpy(), (~ma).value, atol=1e-12)
        np.testing.assert_allclose(algebra.involute(a[row]).numpy(), ma.gradeInvol().value, atol=1e-12)
        np.testing.assert_allclose(algebra.conjugate(a[row]).numpy(), ma.conjugate().value, atol=1e-12)
        q = float(algebra.quadratic_form(a[row]))
        assert q == pytest.approx(float((~ma * ma).value[0]), abs=1e-10)
        per_grade = algebra.grade_quadratic_forms(a[row]).numpy()
        for g in range(algebra.num_grades):
            part = ma(g)
            np.testing.assert_allclose(algebra.grade_projection(a[row], g).numpy(), part.value, atol=1e-12)
            assert per_grade[g] == pytest.approx(float((~part * part).value[0]), abs=1e-10)


def test_product_is_associative_and_batched() -> None:
    algebra = CliffordAlgebra((1.0, -1.0, -1.0, -1.0))
    a, b, c = torch.randn(3, 5, 7, 16, dtype=torch.float64)
    left = algebra.geometric_product(algebra.geometric_product(a, b), c)
    right = algebra.geometric_product(a, algebra.geometric_product(b, c))
    torch.testing.assert_close(left, right)
    single = algebra.geometric_product(a[2, 3], b[2, 3])
    torch.testing.assert_close(algebra.geometric_product(a, b)[2, 3], single)


def test_embed_extract_roundtrip() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    v, bv = torch.randn(4, 3), torch.randn(4, 3)
    x = algebra.embed_vector(v) + algebra.embed_bivector(bv) + algebra.embed_scalar(torch.ones(4))
    torch.testing.assert_close(algebra.extract(x, 1), v)
    torch.testing.assert_close(algebra.extract(x, 2), bv)
    torch.testing.assert_close(algebra.extract(x, 0), torch.ones(4, 1))
    assert algebra.extract(x, 3).abs().max() == 0


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_versor_action_is_the_orthogonal_outermorphism(n: int, reflect: bool) -> None:
    algebra = CliffordAlgebra((1.0,) * n).double()
    generator = torch.Generator().manual_seed(n + 10 * reflect)
    rotation = random_orthogonal(n, generator, reflect)
    versor = algebra.versor_from_orthogonal(rotation)
    u, w = torch.randn(2, 6, n, dtype=torch.float64, generator=generator)
    # vectors transform by the matrix, bivectors u^w by (Ru)^(Rw): the outermorphism
    acted = algebra.versor_action(versor, algebra.embed_vector(u))
    torch.testing.assert_close(acted, algebra.embed_vector(u @ rotation.T))
    uw = algebra.geometric_product(algebra.embed_vector(u), algebra.embed_vector(w))
    ruw = algebra.geometric_product(
        algebra.embed_vector(u @ rotation.T), algebra.embed_vector(w @ rotation.T)
    )
    torch.testing.assert_close(algebra.versor_action(versor, uw), ruw)
    # an algebra automorphism that preserves the quadratic form
    a, b = torch.randn(2, 6, algebra.num_blades, dtype=torch.float64, generator=generator)
    lhs = algebra.versor_action(versor, algebra.geometric_product(a, b))
    rhs = algebra.geometric_product(algebra.versor_action(versor, a), algebra.versor_action(versor, b))
    torch.testing.assert_close(lhs, rhs)
    torch.testing.assert_close(
        algebra.grade_quadratic_forms(algebra.versor_action(versor, a)), algebra.grade_quadratic_forms(a)
    )


def test_buffers_follow_device_moves_and_keep_their_dtypes() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).to(torch.float64)
    assert algebra.sign.dtype == torch.float64
    assert algebra.right_index.dtype == torch.long
    assert {name for name, _ in algebra.named_buffers()} == {
        "sign_bits",
        "right_index",
        "blade_grades",
        "reverse_sign",
        "involute_sign",
        "conjugate_sign",
    }


@pytest.mark.parametrize("casts", [(), ("double",), ("float", "double"), ("half", "float", "double")])
def test_metric_stays_exact_through_dtype_casts(casts: tuple[str, ...]) -> None:
    """A metric of 0.1 gives e1^2 = 0.1 in float64 (not float32's 0.10000000149) after any casts."""
    algebra = CliffordAlgebra((0.1, -2.5, 1.0 / 3.0))
    for cast in casts:
        algebra = getattr(algebra, cast)()
    e = algebra.embed_vector(torch.eye(3, dtype=torch.float64))
    assert algebra.geometric_product(e, e)[:, 0].tolist() == [0.1, -2.5, 1.0 / 3.0]
    e32 = algebra.embed_vector(torch.eye(3)[:1])
    assert float(algebra.geometric_product(e32, e32)[0, 0]) == float(torch.tensor(0.1, dtype=torch.float32))


def test_bad_inputs_raise_value_errors() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        algebra.geometric_product(torch.randn(4, 4), torch.randn(4, 8))
    with pytest.raises(ValueError, match="grades in 0..3"):
        algebra.grade_projection(torch.randn(8), 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        algebra.embed_vector(torch.randn(5, 2))
    with pytest.raises(ValueError, match="orthogonal"):
        algebra.versor_from_orthogonal(2 * torch.eye(3))
    with pytest.raises(ValueError, match="1 to 6"):
        CliffordAlgebra(())
