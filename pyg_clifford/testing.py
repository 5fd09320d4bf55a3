r"""Tools to check the Clifford-group equivariance of your own modules, as e3nn's ``assert_equivariant``
does for e3nn: random orthogonal maps, random versors (rotations, reflections, Lorentz boosts) and
:func:`assert_equivariant`.

.. code-block:: python

    from pyg_clifford import CGConv, CliffordAlgebra
    from pyg_clifford.testing import assert_equivariant

    algebra = CliffordAlgebra((1, -1, -1, -1)).double()       # any signature
    conv = CGConv(2, 3, algebra).double()
    assert_equivariant(conv, algebra, [x, edge_index, pos], ["multivector", "invariant", "position"])

Every group element acts through the library's own :meth:`CliffordAlgebra.versor_action`, so a test with
these tools checks the same action that the layers are built for.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .algebra import CliffordAlgebra

KINDS = ("multivector", "vector", "position", "invariant")


def random_orthogonal(
    n: int,
    generator: torch.Generator | None = None,
    reflect: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A Haar-random orthogonal ``[n, n]`` matrix with determinant -1 if ``reflect`` else +1."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def random_versor(
    algebra: CliffordAlgebra,
    generator: torch.Generator | None = None,
    num_vectors: int = 2,
    min_norm: float = 0.3,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""A product of ``num_vectors`` random Gaussian vectors with :math:`|q(v)| > ` ``min_norm`` (no null
    vectors), ``[2**n]``. An odd count includes a reflection; in an indefinite signature such as
    :math:`Cl(1, 3)` the products also contain boosts."""
    if num_vectors < 0:
        raise ValueError(f"Expected num_vectors >= 0, got {num_vectors}")
    versor = algebra.embed_scalar(torch.ones((), dtype=dtype))
    for _ in range(num_vectors):
        while True:
            v = algebra.embed_vector(
                torch.randn(algebra.dim, generator=generator, dtype=torch.float64).to(dtype)
            )
            if algebra.quadratic_form(v).abs() > min_norm:
                break
        versor = algebra.geometric_product(versor, v)
    return versor


def lorentz_boost(
    algebra: CliffordAlgebra,
    rapidity: float,
    time_axis: int = 0,
    space_axis: int = 1,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""The boost versor :math:`\cosh(\phi/2) + \sinh(\phi/2)\, e_t e_s` for basis vectors with
    :math:`e_t^2 e_s^2 < 0` (e.g. :math:`Cl(1, 3)`): a hyperbolic rotation by ``rapidity`` :math:`\phi` in
    the :math:`(e_t, e_s)` plane (``e_t`` goes to :math:`\cosh\phi\, e_t \pm \sinh\phi\, e_s`)."""
    metric = algebra.metric
    if metric[time_axis] * metric[space_axis] >= 0:
        raise ValueError(
            f"Expected axes {time_axis}, {space_axis} of opposite signature for a boost, got metric {metric}"
        )
    e = torch.eye(algebra.dim, dtype=dtype)
    plane = algebra.geometric_product(algebra.embed_vector(e[time_axis]), algebra.embed_vector(e[space_axis]))
    scalar = algebra.embed_scalar(torch.tensor(math.cosh(rapidity / 2), dtype=dtype))
    return scalar + math.sinh(rapidity / 2) * plane


def default_versors(algebra: CliffordAlgebra, generator: torch.Generator | None = None) -> list[Tensor]:
    """A rotation-like and a reflection-like group element: for a Euclidean metric a Haar-random rotation and
    reflection (:meth:`CliffordAlgebra.versor_from_orthogonal`), otherwise products of 2 and 3 random
    vectors (:func:`random_versor`)."""
    if all(m == 1.0 for m in algebra.metric):
        return [
            algebra.versor_from_orthogonal(random_orthogonal(algebra.dim, generator, reflect))
            for reflect in (False, True)
        ]
    return [random_versor(algebra, generator, k) for k in (2, 3)]


def act(
    algebra: CliffordAlgebra, versor: Tensor, value: Tensor, kind: str, shift: Tensor | None = None
) -> Tensor:
    """Apply a group element to ``value`` of the given kind: ``"multivector"`` ``[..., 2**n]``
    (:meth:`~CliffordAlgebra.versor_action`), ``"vector"`` ``[..., n]`` (the same action on grade 1),
    ``"position"`` (a vector, then translated by ``shift``), ``"invariant"`` (unchanged)."""
    if kind not in KINDS:
        raise ValueError(f"Expected kind in {KINDS}, got {kind!r}")
    if kind == "invariant":
        return value
    versor = versor.to(value.dtype)
    if kind == "multivector":
        return algebra.versor_action(versor, value)
    moved = algebra.extract(algebra.versor_action(versor, algebra.embed_vector(value)), 1)
    return moved + shift.to(value.dtype) if kind == "position" and shift is not None else moved


def assert_equivariant(
    module: Callable[..., Tensor | Sequence[Tensor]],
    algebra: CliffordAlgebra,
    inputs: Sequence[Tensor],
    input_kinds: Sequence[str] | None = None,
    output_kinds: str | Sequence[str] = "multivector",
    versors: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    translate: bool = True,
    atol: float = 1e-6,
    rtol: float = 1e-6,
) -> None:
    r"""Assert :math:`f(g \cdot \mathrm{inputs}) = g \cdot f(\mathrm{inputs})` for each group element ``g``.

    Args:
        module: the function or module to check, called as ``module(*inputs)``; it may return one tensor or a
            tuple of tensors.
        algebra: the algebra whose :meth:`~CliffordAlgebra.versor_action` is the group action.
        inputs: the arguments.
        input_kinds: one of :data:`KINDS` per input (default: every input a multivector).
        output_kinds: one kind, or one per output.
        versors: the group elements (default: :func:`default_versors`).
        generator: random generator for the default versors and the translation.
        translate: translate ``"position"`` inputs and outputs by a random vector (checks translation
            equivariance too).
        atol, rtol: tolerances of :func:`torch.testing.assert_close`.

    Raises ``AssertionError`` (with the group element that failed) if the module is not equivariant, and also
    if every output is zero (a vacuous check).
    """
    input_kinds = ["multivector"] * len(inputs) if input_kinds is None else list(input_kinds)
    if len(input_kinds) != len(inputs):
        raise ValueError(f"Expected {len(inputs)} input kinds, got {len(input_kinds)}")
    versors = default_versors(algebra, generator) if versors is None else list(versors)
    reference = module(*inputs)
    outputs = [reference] if isinstance(reference, Tensor) else list(reference)
    out_kinds = [output_kinds] * len(outputs) if isinstance(output_kinds, str) else list(output_kinds)
    if len(out_kinds) != len(outputs):
        raise ValueError(f"Expected {len(outputs)} output kinds, got {len(out_kinds)}")
    assert any(o.abs().max() > 0 for o in outputs if o.numel()), "every output is zero: the check is vacuous"
    for index, versor in enumerate(versors):
        shift = None
        if translate:
            shift = torch.randn(algebra.dim, generator=generator, dtype=torch.float64)
        moved_inputs = [
            act(algebra, versor, value, kind, shift) if value.is_floating_point() else value
            for value, kind in zip(inputs, input_kinds, strict=True)
        ]
        moved = module(*moved_inputs)
        moved = [moved] if isinstance(moved, Tensor) else list(moved)
        for k, (got, out, kind) in enumerate(zip(moved, outputs, out_kinds, strict=True)):
            torch.testing.assert_close(
                got,
                act(algebra, versor, out, kind, shift),
                atol=atol,
                rtol=rtol,
                msg=lambda m, k=k, i=index: f"output {k} is not equivariant under versor {i}: {m}",
            )
