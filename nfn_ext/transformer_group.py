r"""The maximal symmetry group of multi-head attention, acting on a :class:`TransformerWeightSpace`.

Per block, an element is a head permutation ``pi``, per-head invertible maps ``M_h`` in ``GL(D_k)`` and
``N_h`` in ``GL(D_v)``, and a permutation ``sigma`` of the MLP's hidden neurons. It acts by

.. math::
    W_Q^h \mapsto W_Q^{\pi(h)} M_h^\top,\; b_Q^h \mapsto b_Q^{\pi(h)} M_h^\top,\quad
    W_K^h \mapsto W_K^{\pi(h)} M_h^{-1},\; b_K^h \mapsto b_K^{\pi(h)} M_h^{-1},

    W_V^h \mapsto W_V^{\pi(h)} N_h,\; b_V^h \mapsto b_V^{\pi(h)} N_h,\quad
    W_O^h \mapsto N_h^{-1} W_O^{\pi(h)},\qquad
    (W_A)_{:,j} \mapsto (W_A)_{:,\sigma(j)},\; (b_A)_j \mapsto (b_A)_{\sigma(j)},\;
    (W_B)_{j,:} \mapsto (W_B)_{\sigma(j),:},

and leaves ``b_O``, ``b_B`` alone. Queries and keys only meet as ``(X W_Q + b_Q)(X W_K + b_K)^T``, values and
outputs only as ``(X W_V + b_V) W_O``, heads are summed and the MLP nonlinearity is elementwise, so every
block, and the model, computes the same function (Tran et al., ICLR 2025, the maximal group for heads whose
``W_Q W_K^T`` and ``W_V W_O`` are generic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .transformer_space import TransformerWeightSpace


@dataclass(frozen=True)
class AttentionGroupElement:
    """One group element per model of a batch (``B`` may be 1 to act on every model alike).

    Args:
        head_perm: ``(B, L, H)`` head permutations ``pi``.
        qk: ``(B, L, H, D_k, D_k)`` the maps ``M_h`` (float64).
        vo: ``(B, L, H, D_v, D_v)`` the maps ``N_h`` (float64).
        mlp_perm: ``(B, L, D_A)`` hidden-neuron permutations ``sigma``.
    """

    head_perm: Tensor
    qk: Tensor
    vo: Tensor
    mlp_perm: Tensor

    @property
    def batch_size(self) -> int:
        return self.head_perm.shape[0]

    def act(self, ws: TransformerWeightSpace) -> TransformerWeightSpace:
        """``g . ws`` for a weight space (or equivariant features) of the matching batch size and shape."""
        B, L, H = self.head_perm.shape
        spec = ws.spec
        if (L, H, self.qk.shape[-1], self.vo.shape[-1], self.mlp_perm.shape[-1]) != (
            spec.num_blocks, spec.num_heads, spec.d_qk, spec.d_v, spec.d_mlp
        ):  # fmt: skip
            raise ValueError(f"group element of shape {self._shape()} does not act on weight space {spec}")
        if B not in (1, ws.batch_size):
            raise ValueError(f"group element batch {B} does not match weight space batch {ws.batch_size}")
        dtype = ws.wq.dtype
        m, n = self.qk.expand(ws.batch_size, -1, -1, -1, -1), self.vo.expand(ws.batch_size, -1, -1, -1, -1)
        m_inv, n_inv = torch.linalg.inv(m).to(dtype), torch.linalg.inv(n).to(dtype)
        m, n = m.to(dtype), n.to(dtype)
        perm = self.head_perm.expand(ws.batch_size, -1, -1)[:, None]  # (B, 1, L, H)

        def heads(t: Tensor) -> Tensor:  # t[:, :, l, h] <- t[:, :, l, pi(h)]
            idx = perm.reshape(*perm.shape, *(1,) * (t.dim() - 4))
            return torch.take_along_dim(t, idx, dim=3)

        hid = self.mlp_perm.expand(ws.batch_size, -1, -1)[:, None]  # (B, 1, L, D_A)
        return TransformerWeightSpace(
            wq=torch.einsum("bclhdk,blhjk->bclhdj", heads(ws.wq), m),
            bq=torch.einsum("bclhk,blhjk->bclhj", heads(ws.bq), m),
            wk=torch.einsum("bclhdk,blhkj->bclhdj", heads(ws.wk), m_inv),
            bk=torch.einsum("bclhk,blhkj->bclhj", heads(ws.bk), m_inv),
            wv=torch.einsum("bclhdk,blhkj->bclhdj", heads(ws.wv), n),
            bv=torch.einsum("bclhk,blhkj->bclhj", heads(ws.bv), n),
            wo=torch.einsum("blhjk,bclhkd->bclhjd", n_inv, heads(ws.wo)),
            bo=ws.bo,
            wa=torch.take_along_dim(ws.wa, hid[:, :, :, None, :], dim=4),
            ba=torch.take_along_dim(ws.ba, hid, dim=3),
            wb=torch.take_along_dim(ws.wb, hid[..., None], dim=3),
            bb=ws.bb,
            spec=spec,
            template=ws.template,
        )

    def inverse(self) -> AttentionGroupElement:
        """``pi' = pi^{-1}``, ``M'_k = M_{pi^{-1}(k)}^{-1}``, ``N'_k = N_{pi^{-1}(k)}^{-1}``,
        ``sigma' = sigma^{-1}``."""
        inv = torch.argsort(self.head_perm, dim=-1)

        def gather(t: Tensor) -> Tensor:
            return torch.take_along_dim(t, inv[..., None, None], dim=2)

        return AttentionGroupElement(
            inv,
            torch.linalg.inv(gather(self.qk)),
            torch.linalg.inv(gather(self.vo)),
            torch.argsort(self.mlp_perm, dim=-1),
        )

    def _shape(self) -> tuple[int, ...]:
        return (*self.head_perm.shape[1:], self.qk.shape[-1], self.vo.shape[-1], self.mlp_perm.shape[-1])


def scale_bounds(
        scale_range: float | Sequence[float] | None, default: tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` of a group element's scale range: ``default`` for ``None``, ``(1/s, s)`` for a number
    ``s``; refuses anything but ``0 < lo <= hi``."""
    if scale_range is None:
        scale_range = default
    if isinstance(scale_range, int | float):
        scale_range = (1.0 / scale_range, float(scale_range))
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"expected 0 < lo <= hi for scale_range, got {scale_range}")
    return float(lo), float(hi)


def random_gl(
    shape: Sequence[int], dim: int, lo: float, hi: float, generator: torch.Generator | None = None
) -> Tensor:
    """Random ``(*shape, dim, dim)`` float64 matrices ``U diag(s) V^T``: ``U, V`` Haar-orthogonal, singular
    values ``s`` log-uniform in ``[lo, hi]`` (condition number up to ``hi / lo``)."""

    def orthogonal() -> Tensor:
        q, r = torch.linalg.qr(torch.randn(*shape, dim, dim, dtype=torch.float64, generator=generator))
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]

    s = torch.empty(*shape, dim, dtype=torch.float64)
    s.uniform_(math.log(lo), math.log(hi), generator=generator)
    return orthogonal() @ torch.diag_embed(s.exp()) @ orthogonal().transpose(-1, -2)


def random_attention_group_element(
    ws: TransformerWeightSpace,
    scale_range: float | Sequence[float] | None = None,
    permute: bool = True,
    generator: torch.Generator | None = None,
) -> AttentionGroupElement:
    """Sample one element per model of ``ws``.

    Args:
        scale_range: singular values of every ``M_h``, ``N_h`` are log-uniform in ``[lo, hi]``; a number ``s``
            means ``[1/s, s]`` (condition numbers up to ``s**2``). Default ``[0.5, 2]``; ill-conditioned
            elements: e.g. ``1e3``.
        permute: sample head and hidden-neuron permutations (else the identity).
        generator: optional random generator (CPU).
    """
    lo, hi = scale_bounds(scale_range, (0.5, 2.0))
    spec, B = ws.spec, ws.batch_size
    L, H = spec.num_blocks, spec.num_heads

    def perm(n: int) -> Tensor:
        if permute:
            return torch.argsort(torch.rand(B, L, n, generator=generator), dim=-1)
        return torch.arange(n).expand(B, L, n)

    device = ws.wq.device
    return AttentionGroupElement(
        perm(H).to(device),
        random_gl((B, L, H), spec.d_qk, lo, hi, generator).to(device),
        random_gl((B, L, H), spec.d_v, lo, hi, generator).to(device),
        perm(spec.d_mlp).to(device),
    )
