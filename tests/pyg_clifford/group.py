"""Random Clifford-group elements for the equivariance tests (through the library's own action)."""

import torch

from pyg_clifford import CliffordAlgebra


def random_orthogonal(n: int, generator: torch.Generator, reflect: bool) -> torch.Tensor:
    """A Haar-random orthogonal matrix with determinant -1 if ``reflect`` else +1."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def random_versor(algebra: CliffordAlgebra, generator: torch.Generator, num_vectors: int) -> torch.Tensor:
    """A product of ``num_vectors`` random non-null vectors (odd count: includes a reflection)."""
    versor = algebra.embed_scalar(torch.ones((), dtype=torch.float64))
    for _ in range(num_vectors):
        while True:
            v = algebra.embed_vector(torch.randn(algebra.dim, generator=generator, dtype=torch.float64))
            if algebra.quadratic_form(v).abs() > 0.3:
                break
        versor = algebra.geometric_product(versor, v)
    return versor
