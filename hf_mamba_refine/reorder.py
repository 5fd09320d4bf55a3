"""Refinement 2: reorder the tokens of a mixer's x branch by a learned importance score (SoftSort)."""

import torch.nn.functional as F
from torch import Tensor, nn


def soft_sort(scores: Tensor, tau: float = 1.0, hard: bool = False) -> Tensor:
    """SoftSort relaxation of the permutation that sorts ``scores`` in increasing order.

    .. math::
        P_{kl} = \\operatorname{softmax}_l\\left(-\\,|s_l - \\operatorname{sort}(s)_k| / \\tau\\right),

    so ``(P @ x)[k]`` is (softly) the token of ``k``-th smallest score. With ``hard=True`` the forward value
    is the exact permutation matrix of ``argsort`` and the gradient that of the soft one (straight-through).

    Args:
        scores: importance scores ``[..., L]``.
        tau: temperature (> 0); ``P`` tends to the permutation matrix as ``tau -> 0``.
        hard: use the straight-through hard permutation.

    Returns:
        Row-stochastic ``[..., L, L]``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    ordered = scores.sort(dim=-1).values
    soft = F.softmax(-(ordered.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau, dim=-1)
    if not hard:
        return soft
    permutation = F.one_hot(scores.argsort(dim=-1), scores.shape[-1]).to(soft.dtype)
    return permutation + (soft - soft.detach())  # exactly the permutation in the forward pass


class ImportanceReorder(nn.Module):
    """Importance scorer and SoftSort reordering applied to the mixer's x branch (after conv + SiLU).

    .. math::
        s_l = k^\\top S_\\Delta x_l, \\qquad x \\leftarrow P(s)\\, x,

    where ``S_delta`` is the first ``R`` rows of ``x_proj.weight`` (shared with the mixer) and ``k`` is the
    only new parameter. Tokens end up in increasing order of importance; the gate is not permuted and the
    output is not un-permuted (as in the reference).

    Args:
        time_step_rank: ``R``.
        tau: SoftSort temperature.
        hard: straight-through hard permutation.

    Shapes:
        - **x:** ``[B, L, I]``; **s_delta:** ``[R, I]``; **output:** ``[B, L, I]``.
    """

    def __init__(self, time_step_rank: int, tau: float = 1.0, hard: bool = False):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.scorer = nn.Linear(time_step_rank, 1, bias=False)
        self.tau = tau
        self.hard = hard

    def scores(self, x: Tensor, s_delta: Tensor) -> Tensor:
        """Importance ``[B, L]`` of each token."""
        return self.scorer(x @ s_delta.transpose(0, 1)).squeeze(-1)

    def forward(self, x: Tensor, s_delta: Tensor) -> Tensor:
        permutation = soft_sort(self.scores(x, s_delta), self.tau, self.hard)
        return permutation.to(x.dtype) @ x

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}"
