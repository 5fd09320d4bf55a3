"""Refinement 1: a sign-definite reparametrisation of the selective projections S_B and S_C.

``MambaMixer.x_proj.weight`` has shape ``[R + 2N, I]`` and stacks ``[S_delta; S_B; S_C]``. The
parametrisation rewrites the two ``N``-row blocks as

.. math::
    S_C = \\operatorname{triu}_1(W_C) + [I_N \\; 0], \\qquad
    S_B = \\sigma \\operatorname{diag}(d) S_C, \\qquad
    d = \\operatorname{softplus}(\\operatorname{diag} W_B) + d_{\\min},

so that :math:`S_C^\\top S_B = \\sigma S_C^\\top \\operatorname{diag}(d) S_C` is positive semidefinite for
:math:`\\sigma = +1` (divergent regime) and negative semidefinite for :math:`\\sigma = -1` (convergent
ablation). ``S_delta`` is untouched; no parameter is added (the free tensor has the weight's shape). Its
``right_inverse`` is the Frobenius-closest point of the constraint set, so registering it on a trained weight
projects that weight (used by :func:`hf_mamba_refine.project_stable`).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REGIMES = {"divergent": 1.0, "convergent": -1.0}


def _inverse_softplus(y: Tensor) -> Tensor:
    """Inverse of ``softplus`` for ``y > 0``: ``log(expm1(y))``, written stably for large ``y``."""
    return y + torch.log(-torch.expm1(-y))


def _row_objective(d: Tensor, b_k: Tensor, beta: Tensor, gamma: Tensor, kappa: Tensor) -> Tensor:
    """Squared distance of one row pair once the free entries of ``S_C`` are eliminated (``closest_rows``)."""
    return (b_k - d) ** 2 + (beta - 2.0 * gamma * d + kappa * d**2) / (1.0 + d**2)


def closest_rows(
    b: Tensor, c: Tensor, d_min: float, grid: int = 512, refine: int = 60
) -> tuple[Tensor, Tensor]:
    """Closest ``(diag(d) S, S)`` to ``(b, c)`` with ``S`` unit upper-triangular and ``d >= d_min``.

    Row ``k`` separates: for a fixed ``d`` the free entries ``j > k`` are ``(c_j + d b_j) / (1 + d^2)``, which
    leaves the scalar objective ``(b_k - d)^2 + sum_{j>k} (b_j - d c_j)^2 / (1 + d^2)``, minimised over
    ``d`` by a grid search followed by golden-section refinement (vectorised over rows).

    Args:
        b: target ``S_B`` block ``[N, I]`` (sign already folded in).
        c: target ``S_C`` block ``[N, I]``.
        d_min: lower bound of ``d``.

    Returns:
        ``d`` of shape ``[N]`` and the unit upper-triangular ``S_C`` of shape ``[N, I]``.
    """
    n, width = c.shape
    upper = torch.ones(n, width, dtype=torch.bool, device=c.device).triu(1)
    b_k = b.diagonal()
    beta = (b**2 * upper).sum(1)
    gamma = (b * c * upper).sum(1)
    kappa = (c**2 * upper).sum(1)
    f_min = _row_objective(torch.full_like(b_k, d_min), b_k, beta, gamma, kappa)
    d_max = torch.maximum(b_k + f_min.sqrt(), torch.full_like(b_k, d_min)) + 1e-6
    steps = torch.linspace(0.0, 1.0, grid, dtype=b.dtype, device=b.device)
    candidates = d_min + (d_max - d_min)[:, None] * steps  # [N, grid]
    values = _row_objective(candidates, b_k[:, None], beta[:, None], gamma[:, None], kappa[:, None])
    best = values.argmin(1, keepdim=True)
    spacing = (d_max - d_min) / (grid - 1)
    lo = (candidates.gather(1, best).squeeze(1) - spacing).clamp_min(d_min)
    hi = candidates.gather(1, best).squeeze(1) + spacing
    ratio = (5**0.5 - 1) / 2
    for _ in range(refine):  # golden section on a bracket of width 2 * spacing (unimodal there)
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        left = _row_objective(m1, b_k, beta, gamma, kappa) < _row_objective(m2, b_k, beta, gamma, kappa)
        hi, lo = torch.where(left, m2, hi), torch.where(left, lo, m1)
    d = (lo + hi) / 2
    eye = torch.eye(n, width, dtype=c.dtype, device=c.device)
    s_c = torch.where(upper, (c + d[:, None] * b) / (1.0 + d[:, None] ** 2), eye)
    return d, s_c


class SignDefiniteProjection(nn.Module):
    """``torch.nn.utils.parametrize`` module for ``MambaMixer.x_proj.weight`` (see the module docstring).

    Args:
        time_step_rank: ``R``, the number of ``S_delta`` rows.
        state_size: ``N``, the number of rows of ``S_B`` and of ``S_C``.
        regime: ``"divergent"`` (``S_C^T S_B`` PSD, the refinement) or ``"convergent"`` (NSD, the ablation).
        d_min: floor of the diagonal scale ``d`` (0.7 in the reference code).

    Shapes:
        - **input / output:** ``[R + 2N, I]`` with ``I >= N``.
    """

    def __init__(self, time_step_rank: int, state_size: int, regime: str = "divergent", d_min: float = 0.7):
        super().__init__()
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {regime!r}")
        if d_min <= 0:
            raise ValueError(f"d_min must be positive, got {d_min}")
        self.time_step_rank = time_step_rank
        self.state_size = state_size
        self.regime = regime
        self.sign = REGIMES[regime]
        self.d_min = d_min

    def _split(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows = self.time_step_rank + 2 * self.state_size
        if weight.dim() != 2 or weight.shape[0] != rows or weight.shape[1] < self.state_size:
            raise ValueError(
                f"expected an x_proj weight of shape [{rows}, I >= {self.state_size}], "
                f"got {tuple(weight.shape)}"
            )
        return weight.split([self.time_step_rank, self.state_size, self.state_size], dim=0)

    def forward(self, weight: Tensor) -> Tensor:
        s_delta, w_b, w_c = self._split(weight)
        eye = torch.eye(*w_c.shape, dtype=weight.dtype, device=weight.device)
        s_c = torch.triu(w_c, 1) + eye
        d = self.sign * (F.softplus(w_b.diagonal()) + self.d_min)
        return torch.cat([s_delta, d[:, None] * s_c, s_c], dim=0)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        """Free tensor whose image is the Frobenius-closest constrained weight to ``weight``."""
        s_delta, w_b, w_c = self._split(weight)
        d, s_c = closest_rows(self.sign * w_b.double(), w_c.double(), self.d_min)
        # d >= d_min; a tiny margin keeps the inverse softplus finite on the boundary.
        u = _inverse_softplus((d - self.d_min).clamp_min(1e-12)).to(weight.dtype)
        eye = torch.eye(*w_c.shape, dtype=torch.bool, device=weight.device)
        free_b = torch.where(eye, u[:, None].expand_as(w_b), w_b)
        free_c = torch.where(torch.ones_like(eye).triu(1), s_c.to(weight.dtype), w_c)
        return torch.cat([s_delta, free_b, free_c], dim=0)

    def extra_repr(self) -> str:
        return (
            f"rank={self.time_step_rank}, state_size={self.state_size}, regime={self.regime}, "
            f"d_min={self.d_min}"
        )
