"""The monomial group acting on a weight space.

Hidden layer ``i`` (``1 <= i < L``) gets ``g_i = D_i P_i`` with ``(P_i x)_j = x_{pi_i(j)}`` and ``D_i``
diagonal; input and output layers get the identity. The action is

.. math::
    W^{(i)} \\mapsto g_i W^{(i)} g_{i-1}^{-1}, \\quad b^{(i)} \\mapsto g_i b^{(i)}, \\qquad
    W^{(i)}_{jk} \\mapsto \\frac{d_{i,j}}{d_{i-1,k}} W^{(i)}_{\\pi_i(j)\\pi_{i-1}(k)}.

``D_i`` is positive for ReLU/LeakyReLU networks (positively homogeneous) and ``+-1`` for tanh (odd), so the
acted-on network computes the same function. One implementation serves the layers' tests, the trainer's
augmentation and the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .transformer_group import AttentionGroupElement, random_attention_group_element, scale_bounds
from .transformer_space import TransformerWeightSpace
from .weight_space import WeightSpace


@dataclass(frozen=True)
class MonomialGroupElement:
    """One group element per network of a batch.

    Args:
        permutations: ``L - 1`` long tensors ``(B, n_i)``, one per hidden layer.
        scales: ``L - 1`` tensors ``(B, n_i)`` (positive, or ``+-1`` for sign flips); sampled in float64 and
            cast to the weight dtype in :meth:`act`.
    """

    permutations: tuple[Tensor, ...]
    scales: tuple[Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.permutations[0].shape[0]

    def act(self, ws: WeightSpace) -> WeightSpace:
        """``g . ws`` for a weight space (or equivariant features) of the matching batch size."""
        L = ws.num_layers
        if len(self.permutations) != L - 1:
            raise ValueError(
                f"group element has {len(self.permutations)} hidden layers, weight space {L - 1}"
            )
        if self.batch_size not in (1, ws.batch_size):
            raise ValueError(
                f"group element batch {self.batch_size} does not match weight space {ws.batch_size}"
            )
        weights, biases = [], []
        for l, (w, b) in enumerate(zip(ws.weights, ws.biases, strict=True)):
            extra = (None,) * (w.dim() - 4)  # kernel dimensions
            if l < L - 1:  # rows belong to hidden layer l + 1
                perm, scale = self.permutations[l], self.scales[l].to(w.dtype)
                w = (
                    torch.take_along_dim(w, perm[:, None, :, None, *extra], dim=2)
                    * scale[:, None, :, None, *extra]
                )
                b = torch.take_along_dim(b, perm[:, None, :], dim=2) * scale[:, None, :]
            if l > 0:  # columns belong to hidden layer l
                perm, scale = self.permutations[l - 1], self.scales[l - 1].to(w.dtype)
                w = (
                    torch.take_along_dim(w, perm[:, None, None, :, *extra], dim=3)
                    / scale[:, None, None, :, *extra]
                )
            weights.append(w)
            biases.append(b)
        return WeightSpace(weights, biases, ws.spec)

    def inverse(self) -> MonomialGroupElement:
        """``g^{-1} = P^T D^{-1} = D' P'`` with ``pi' = pi^{-1}`` and ``d'_k = 1 / d_{pi^{-1}(k)}``."""
        inv_perms = tuple(torch.argsort(p, dim=1) for p in self.permutations)
        inv_scales = tuple(
            1.0 / torch.take_along_dim(d, q, dim=1) for d, q in zip(self.scales, inv_perms, strict=True)
        )
        return MonomialGroupElement(inv_perms, inv_scales)


def random_group_element(
    ws: WeightSpace | TransformerWeightSpace,
    scale_range: float | Sequence[float] | None = None,
    permute: bool = True,
    group: str | None = None,
    generator: torch.Generator | None = None,
) -> MonomialGroupElement | AttentionGroupElement:
    """Sample one random group element per network of ``ws``.

    For a :class:`~nfn_ext.TransformerWeightSpace` this is the attention group (``group`` ``None`` or
    ``"attention"``; see :func:`~nfn_ext.transformer_group.random_attention_group_element`).

    Args:
        ws: the weight space (its spec gives the widths and, via the activation, the group).
        scale_range: for the ``"scale"`` group, scales are log-uniform in ``[lo, hi]``; a number ``s`` means
            ``[1/s, s]``. Default ``[0.1, 10]``. Not allowed for the ``"sign"`` group.
        permute: sample permutations (else the identity).
        group: ``"scale"`` or ``"sign"``; defaults to the group of ``ws.spec.activation``.
        generator: optional random generator (CPU).
    """
    if isinstance(ws, TransformerWeightSpace):
        if group not in (None, "attention"):
            raise ValueError(f"a TransformerWeightSpace has the 'attention' group, got {group!r}")
        return random_attention_group_element(ws, scale_range, permute, generator)
    group = group or ws.spec.group
    if group not in ("scale", "sign"):
        raise ValueError(f"expected group 'scale' or 'sign', got {group!r}")
    if group == "sign" and scale_range is not None:
        raise ValueError("the sign-flip group (tanh networks) has no scalings; leave scale_range=None")
    lo, hi = scale_bounds(scale_range, (0.1, 10.0))
    B, device = ws.batch_size, ws.weights[0].device
    perms, scales = [], []
    for n in ws.spec.dims[1:-1]:
        if permute:
            perm = torch.argsort(torch.rand(B, n, generator=generator), dim=1)
        else:
            perm = torch.arange(n).expand(B, n)
        if group == "scale":
            log_d = torch.empty(B, n, dtype=torch.float64).uniform_(
                math.log(lo), math.log(hi), generator=generator
            )
            scale = log_d.exp()
        else:
            scale = torch.randint(0, 2, (B, n), generator=generator).double() * 2.0 - 1.0
        perms.append(perm.to(device))
        scales.append(scale.to(device))
    return MonomialGroupElement(tuple(perms), tuple(scales))
