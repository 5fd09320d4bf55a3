"""Clifford algebra Cl(p, q, r) over an orthogonal basis, with the geometric product as a signed gather."""

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from torch import Tensor, nn


def _reorder_sign(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    r"""Sign :math:`(-1)^{s}` of sorting the concatenated indices of blade bitmaps ``left`` and ``right``,
    with :math:`s = \sum_{k \ge 1} \mathrm{popcount}((\mathrm{left} \gg k) \,\&\, \mathrm{right})`."""
    swaps = np.zeros(np.broadcast(left, right).shape, dtype=np.int64)
    shifted = left >> 1
    while np.any(shifted):
        swaps += np.bitwise_count(shifted & right)
        shifted = shifted >> 1
    return np.where(swaps % 2 == 0, 1, -1)


class CliffordAlgebra(nn.Module):
    r"""The Clifford algebra of a diagonal metric :math:`\mathrm{diag}(m_1, \ldots, m_n)`, e.g.
    ``(1, 1, 1)`` for :math:`Cl(3, 0)` or ``(1, -1, -1, -1)`` for :math:`Cl(1, 3)`; zeros give null
    directions.

    Multivectors are tensors of shape ``[..., 2**n]`` whose last axis holds the coefficients of the basis
    blades, ordered by grade and then lexicographically (for :math:`n = 3`:
    :math:`1, e_1, e_2, e_3, e_{12}, e_{13}, e_{23}, e_{123}`), the layout of the ``clifford`` package.

    The product of blades :math:`e_A e_B = \sigma(A, B)\, e_{A \oplus B}`, so

    .. math::
        (a b)_j = \sum_i \sigma_{ij}\, a_i\, b_{k(i, j)}, \qquad k(i, j) = i \oplus j

    is a gather of ``b`` followed by a signed sum: :math:`O(4^n)` work, no :math:`8^n` Cayley contraction.
    The tables are buffers, so ``algebra.to(device)`` moves them. The signed metric factors
    :math:`\sigma_{ij}` are kept exact: they are stored as the bits of float64 numbers (an integer buffer that
    ``.float()`` / ``.double()`` leave alone) and rounded once to the working dtype of each call, so a
    metric entry ``0.1`` gives :math:`e_1^2 = 0.1` in float64 whatever dtype casts the module went through.

    Args:
        metric (sequence of float): the squares :math:`e_i^2` of the basis vectors.
    """

    right_index: Tensor
    sign_bits: Tensor
    blade_grades: Tensor
    reverse_sign: Tensor
    involute_sign: Tensor
    conjugate_sign: Tensor

    def __init__(self, metric: Sequence[float]) -> None:
        super().__init__()
        metric = [float(m) for m in metric]
        if not 1 <= len(metric) <= 6:
            raise ValueError(f"Expected a metric of 1 to 6 diagonal entries, got {len(metric)}")
        self.metric = tuple(metric)
        self.dim = len(metric)
        self.num_blades = 2**self.dim
        self.num_grades = self.dim + 1
        self.table_cache: dict = {}
        """Constant tables derived from the buffers, keyed by the layers that build them (eager mode only)."""

        blades = [c for g in range(self.dim + 1) for c in combinations(range(self.dim), g)]
        self.blade_names = ["1" if not b else "e" + "".join(str(i + 1) for i in b) for b in blades]
        bitmaps = np.array([sum(1 << i for i in b) for b in blades], dtype=np.int64)
        position = np.empty(self.num_blades, dtype=np.int64)
        position[bitmaps] = np.arange(self.num_blades)
        grades = np.array([len(b) for b in blades], dtype=np.int64)

        # For output blade j and left blade i, the right blade is k = i xor j (as bitmaps).
        left = bitmaps[:, None]
        right = bitmaps[:, None] ^ bitmaps[None, :]
        metric_factor = np.ones_like(right, dtype=np.float64)
        for axis, square in enumerate(metric):
            metric_factor = np.where((left & right) >> axis & 1, metric_factor * square, metric_factor)
        sign = _reorder_sign(left, right) * metric_factor

        self.register_buffer("right_index", torch.from_numpy(position[right]), persistent=False)
        sign_bits = torch.from_numpy(np.ascontiguousarray(sign, dtype=np.float64)).view(torch.int64)
        self.register_buffer("sign_bits", sign_bits, persistent=False)
        self.register_buffer("blade_grades", torch.from_numpy(grades), persistent=False)
        g = torch.from_numpy(grades)
        self.register_buffer("reverse_sign", (-1.0) ** (g * (g - 1) // 2), persistent=False)
        self.register_buffer("involute_sign", (-1.0) ** g, persistent=False)
        self.register_buffer("conjugate_sign", (-1.0) ** (g * (g + 1) // 2), persistent=False)
        self.grade_slices = [
            slice(int((grades < k).sum()), int((grades <= k).sum())) for k in range(self.dim + 1)
        ]

    def extra_repr(self) -> str:
        return f"metric={self.metric}"

    @property
    def sign(self) -> Tensor:
        r"""The exact signed metric factors :math:`\sigma_{ij}` (output blade ``j``, left blade ``i``),
        float64 ``[2**n, 2**n]``."""
        return self.sign_bits.view(torch.float64)

    def sign_table(self, dtype: torch.dtype) -> Tensor:
        r""":math:`\sigma_{ij}` rounded once from float64 to ``dtype``."""
        return self.sign.to(dtype)

    def check(self, x: Tensor, name: str = "input") -> None:
        """Raise a ``ValueError`` unless the last axis of ``x`` has ``2**n`` entries (shape only: no device
        synchronisation, nothing that breaks a ``torch.compile`` graph)."""
        if x.dim() == 0 or x.size(-1) != self.num_blades:
            raise ValueError(
                f"Expected {name} of shape [..., {self.num_blades}] for Cl{self.metric} "
                f"(2**{self.dim} blades), got {tuple(x.shape)}"
            )

    def geometric_product(self, a: Tensor, b: Tensor) -> Tensor:
        r"""Geometric product :math:`ab` of broadcastable multivectors ``[..., 2**n]``."""
        self.check(a, "a")
        self.check(b, "b")
        b_gathered = b[..., self.right_index]  # [..., i, j] = b_{i xor j}
        return torch.einsum("...i,...ij,ij->...j", a, b_gathered, self.sign_table(a.dtype))

    def grade_projection(self, x: Tensor, grades: int | Sequence[int]) -> Tensor:
        r"""Keep the blades of the given grade(s): :math:`\langle x \rangle_g`, shape unchanged."""
        self.check(x)
        grades = [grades] if isinstance(grades, int) else list(grades)
        if any(not 0 <= g <= self.dim for g in grades):
            raise ValueError(f"Expected grades in 0..{self.dim}, got {grades}")
        mask = torch.isin(self.blade_grades, torch.tensor(grades, device=x.device))
        return x * mask.to(x.dtype)

    def reverse(self, x: Tensor) -> Tensor:
        r"""Reversion :math:`\tilde x`: grade :math:`g` times :math:`(-1)^{g(g-1)/2}`."""
        self.check(x)
        return x * self.reverse_sign.to(x.dtype)

    def involute(self, x: Tensor) -> Tensor:
        r"""Grade involution :math:`\alpha(x)`: grade :math:`g` times :math:`(-1)^g`."""
        self.check(x)
        return x * self.involute_sign.to(x.dtype)

    def conjugate(self, x: Tensor) -> Tensor:
        r"""Clifford conjugation :math:`\bar x`: grade :math:`g` times :math:`(-1)^{g(g+1)/2}`."""
        self.check(x)
        return x * self.conjugate_sign.to(x.dtype)

    def blade_squares(self, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""The scalars :math:`\tilde e_A e_A` of each blade, shape ``[2**n]``."""
        return (self.reverse_sign.to(torch.float64) * self.sign[:, 0]).to(dtype)

    def grade_sum_matrix(self, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""The ``[n + 1, 2**n]`` matrix :math:`P_{gA} = [|A| = g]\, \tilde e_A e_A`, so that
        :math:`P\,(x \odot x)` are the per-grade quadratic forms of blade-major ``x`` ``[2**n, ...]``."""
        grades = torch.arange(self.num_grades, device=self.blade_grades.device)
        member = self.blade_grades[None, :] == grades[:, None]
        return member.to(dtype) * self.blade_squares(dtype)

    def quadratic_form(self, x: Tensor) -> Tensor:
        r"""Quadratic form :math:`q(x) = \langle \tilde x x \rangle_0 = \sum_A (\tilde e_A e_A)\, x_A^2`,
        shape ``[...]``."""
        self.check(x)
        return (x * x * self.blade_squares(x.dtype)).sum(-1)

    def grade_quadratic_forms(self, x: Tensor) -> Tensor:
        r"""Per-grade quadratic forms :math:`q(\langle x \rangle_g)`: ``[..., 2**n] -> [..., n + 1]``."""
        self.check(x)
        per_blade = x * x * self.blade_squares(x.dtype)
        out = per_blade.new_zeros(*x.shape[:-1], self.num_grades)
        return out.index_add_(-1, self.blade_grades, per_blade)

    def grade_norms(self, x: Tensor, eps: float = 1e-12) -> Tensor:
        r"""Per-grade norms :math:`\sqrt{|q(\langle x \rangle_g)| + \epsilon}`,
        ``[..., 2**n] -> [..., n + 1]``."""
        return (self.grade_quadratic_forms(x).abs() + eps).sqrt()

    def norm(self, x: Tensor, eps: float = 1e-12) -> Tensor:
        r"""Norm :math:`\sqrt{|q(x)| + \epsilon}`, shape ``[...]``."""
        return (self.quadratic_form(x).abs() + eps).sqrt()

    def expand_grades(self, per_grade: Tensor) -> Tensor:
        """Repeat per-grade values ``[..., n + 1]`` over the blades of each grade: ``[..., 2**n]``."""
        if per_grade.size(-1) != self.num_grades:
            raise ValueError(
                f"Expected [..., {self.num_grades}] per-grade values, got {tuple(per_grade.shape)}"
            )
        return per_grade[..., self.blade_grades]

    def embed(self, values: Tensor, grade: int) -> Tensor:
        """Place ``[..., C(n, grade)]`` coefficients into the blades of one grade: ``[..., 2**n]``."""
        block = self.grade_slices[grade]
        width = block.stop - block.start
        if values.size(-1) != width:
            raise ValueError(
                f"Expected [..., {width}] coefficients for grade {grade}, got {tuple(values.shape)}"
            )
        out = values.new_zeros(*values.shape[:-1], self.num_blades)
        out[..., block] = values
        return out

    def extract(self, x: Tensor, grade: int) -> Tensor:
        """The coefficients of one grade: ``[..., 2**n] -> [..., C(n, grade)]``."""
        self.check(x)
        return x[..., self.grade_slices[grade]]

    def embed_scalar(self, s: Tensor) -> Tensor:
        """Scalars ``[...]`` to multivectors ``[..., 2**n]``."""
        return self.embed(s.unsqueeze(-1), 0)

    def embed_vector(self, v: Tensor) -> Tensor:
        """Vectors ``[..., n]`` to grade-1 multivectors ``[..., 2**n]``."""
        return self.embed(v, 1)

    def embed_bivector(self, b: Tensor) -> Tensor:
        """Bivector coefficients ``[..., n(n-1)/2]`` (order e12, e13, ...) to multivectors."""
        return self.embed(b, 2)

    def inverse_versor(self, v: Tensor) -> Tensor:
        r"""Inverse of a versor: :math:`v^{-1} = \tilde v / (v \tilde v)` (exact for products of vectors)."""
        self.check(v)
        return self.reverse(v) / self.quadratic_form(v).unsqueeze(-1)

    def versor_action(self, v: Tensor, x: Tensor) -> Tensor:
        r"""Twisted conjugation (CGENN's action)
        :math:`\rho(v)(x) = v\, x^{[0]}\, v^{-1} + \alpha(v)\, x^{[1]}\, v^{-1}`,
        with :math:`x^{[0]}, x^{[1]}` the even and odd parts of :math:`x`.

        For a product of ``k`` vectors this is the outermorphism of the orthogonal map that is the
        composition of the ``k`` reflections; it is an algebra automorphism. ``v``: ``[2**n]`` or
        broadcastable to ``x``: ``[..., 2**n]``.
        """
        self.check(v, "versor")
        self.check(x)
        even = x * (self.involute_sign > 0).to(x.dtype)
        left = self.geometric_product(v, even) + self.geometric_product(self.involute(v), x - even)
        return self.geometric_product(left, self.inverse_versor(v))

    def versor_from_orthogonal(self, matrix: Tensor) -> Tensor:
        r"""A versor (product of at most ``n`` unit vectors) whose action on vectors is ``matrix``
        (Householder factorisation), for a Euclidean metric: :math:`\rho(v)(x) = R x` on grade 1."""
        if matrix.shape != (self.dim, self.dim):
            raise ValueError(
                f"Expected an orthogonal matrix of shape ({self.dim}, {self.dim}), got {tuple(matrix.shape)}"
            )
        if any(m != 1.0 for m in self.metric):
            raise ValueError(f"versor_from_orthogonal needs a Euclidean metric, got {self.metric}")
        eye = torch.eye(self.dim, dtype=matrix.dtype, device=matrix.device)
        if not torch.allclose(matrix.T @ matrix, eye, atol=1e-5):
            raise ValueError("Expected an orthogonal matrix (R^T R = I)")
        versor = self.embed_scalar(torch.ones((), dtype=matrix.dtype, device=matrix.device))
        remaining = matrix.clone()
        for axis in range(self.dim):  # at most n reflections, each fixing one more basis vector
            normal = remaining[:, axis] - eye[:, axis]
            if normal.norm() < 1e-7:
                continue
            normal = normal / normal.norm()
            remaining = remaining - 2 * torch.outer(normal, normal @ remaining)
            versor = self.geometric_product(versor, self.embed_vector(normal))
        return versor
