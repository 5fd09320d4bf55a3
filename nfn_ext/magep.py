"""MAGEP-NFN (Vo et al., ICML 2025): polynomial layers equivariant to the monomial group.

With ``W_{(s,t)} = W^{(s)} \\cdots W^{(t+1)}`` (which transforms as ``g_s W_{(s,t)} g_t^{-1}``) and
fixed random ``Psi'`` ``(n_0, n_L)`` and ``psi`` ``(n_L,)`` that contract only the fixed input/output
dimensions, each layer ``s`` gets two extra weight-like terms and one bias-like term per channel:

.. math::
    X^{(s)} = W_{(s,0)} \\Psi' W_{(L,s-1)}, \\qquad Y^{(s)} = b^{(s)} \\psi^\\top W_{(L,s-1)}, \\qquad
    \\beta^{(s)} = \\sum_{t \\le s} W_{(s,t)} b^{(t)} = W^{(s)} \\beta^{(s-1)} + b^{(s)},

all of which transform like ``W^{(s)}`` (resp. ``b^{(s)}``) and are divided by the invariant
``1 + ||W_{(L,0)}||_F`` (per network and channel; ours, to keep stacked layers finite). The Monomial-NFN
sharing template (:class:`~nfn_ext.monomial.MonomialMixing`) is applied to ``[W, X, Y]`` and ``[b, beta]``.
The invariant model adds the invariants ``W_{(L,0)}``, ``beta^{(L)}`` and ``tr(W_{(s,0)} Psi' W_{(L,s)})``
through ``asinh`` (ours). For convolutions the products use the kernel-summed weights
``sum_{uv} W_{:,:,u,v}`` (our choice; the group acts on every kernel position alike, so this is still
equivariant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .monomial import (
    MonomialMixing,
    MonomialPool,
    channels_to_kernels,
    equivariant_activation,
    kernels_to_channels,
    mlp_head,
)
from .weight_space import WeightSpace, WeightSpaceSpec


def weight_products(ws: WeightSpace) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Chained products of kernel-summed weights ``Wb_l`` ``(B, C, n_{l+1}, n_l)`` (0-based ``l``).

    Returns:
        ``forward[l] = W_{(l+1,0)}`` ``(B, C, n_{l+1}, n_0)``, ``backward[l] = W_{(L,l)}``
        ``(B, C, n_L, n_l)`` for ``l < L``, and ``beta[l]`` ``(B, C, n_{l+1})``.
    """
    wbar = [w.flatten(4).sum(-1) if w.dim() == 6 else w for w in ws.weights]
    L = len(wbar)
    forward, beta = [wbar[0]], [ws.biases[0]]
    for l in range(1, L):
        forward.append(wbar[l] @ forward[-1])
        beta.append((wbar[l] @ beta[-1].unsqueeze(-1)).squeeze(-1) + ws.biases[l])
    backward = [wbar[-1]]
    for l in range(L - 2, -1, -1):
        backward.append(backward[-1] @ wbar[l])
    return forward, backward[::-1], beta


class MAGEPLinear(nn.Module):
    """MAGEP-NFN polynomial equivariant layer ``WeightSpace(C_in) -> WeightSpace(C_out)``.

    Args:
        spec: architecture of the input networks.
        in_channels, out_channels: feature channels.
        seed: seed of the fixed contractions ``Psi'`` and ``psi``.

    Shapes:
        - input: :class:`WeightSpace` ``(B, C_in, ...)``
        - output: :class:`WeightSpace` ``(B, C_out, ...)``
    """

    def __init__(self, spec: WeightSpaceSpec, in_channels: int, out_channels: int, seed: int = 0) -> None:
        super().__init__()
        self.spec, self.in_channels, self.out_channels = spec, in_channels, out_channels
        n0, nL, L = spec.dims[0], spec.dims[-1], spec.num_layers
        facs = [layer.filter_size for layer in spec.layers]
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("psi_io", torch.randn(n0, nL, generator=gen) / (n0 * nL) ** 0.5)
        self.register_buffer("psi_out", torch.randn(nL, generator=gen) / nL**0.5)
        self.mixing = MonomialMixing(
            spec.dims,
            [in_channels * (f + 2) for f in facs],
            [2 * in_channels] * L,
            [out_channels * f for f in facs],
            [out_channels] * L,
            spec.group == "sign",
        )

    def forward(self, ws: WeightSpace) -> WeightSpace:
        if ws.channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {ws.channels}")
        forward, backward, beta = weight_products(ws)
        # invariant per-network, per-channel scale 1 + ||W_(L,0)||_F: dividing by it keeps equivariance and
        # stops the degree-(L+1) products from overflowing when layers are stacked
        scale = 1.0 + torch.linalg.vector_norm(forward[-1], dim=(2, 3))  # (B, C)
        weights, biases = [], []
        for l, (w, b) in enumerate(zip(ws.weights, ws.biases, strict=True)):
            x = forward[l] @ self.psi_io @ backward[l] / scale[..., None, None]  # (B, C, n_{l+1}, n_l)
            y = b.unsqueeze(-1) * (self.psi_out @ backward[l]).unsqueeze(-2) / scale[..., None, None]
            weights.append(torch.cat([kernels_to_channels(w), x, y], dim=1))
            biases.append(torch.cat([b, beta[l] / scale[..., None]], dim=1))
        out_w, out_b = self.mixing(weights, biases)
        out_w = [
            channels_to_kernels(w, layer.kernel) for w, layer in zip(out_w, self.spec.layers, strict=True)
        ]
        return WeightSpace(out_w, out_b, ws.spec)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, dims={self.spec.dims}, group={self.spec.group!r}"


def polynomial_invariants(ws: WeightSpace, psi_io: Tensor) -> Tensor:
    """``[W_{(L,0)}, beta^{(L)}, tr(W_{(s,0)} Psi' W_{(L,s)}) for 0 < s < L]`` flattened: ``(B, D)``."""
    forward, backward, beta = weight_products(ws)
    traces = [
        torch.einsum("bcjp,pq,bcqj->bc", forward[s - 1], psi_io, backward[s]) for s in range(1, ws.num_layers)
    ]
    return torch.cat(
        [forward[-1].flatten(1), beta[-1].flatten(1), torch.stack(traces, dim=2).flatten(1)], dim=1
    )


class MAGEPNFN(nn.Module):
    """Invariant MAGEP-NFN: polynomial equivariant layers, pooling + polynomial invariants, MLP head.

    Args:
        spec: architecture of the input networks.
        hidden_channels: channels of the equivariant layers.
        head_hidden: width of the MLP head.
        out_features: outputs per network.
        in_channels: channels of the input weight space.

    Shapes:
        - input: :class:`WeightSpace` ``(B, in_channels, ...)``
        - output: ``(B, out_features)``
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        hidden_channels: Sequence[int] = (16, 16),
        head_hidden: int = 128,
        out_features: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        channels = [in_channels, *hidden_channels]
        self.layers = nn.ModuleList(
            MAGEPLinear(spec, a, b, seed=i)
            for i, (a, b) in enumerate(zip(channels[:-1], channels[1:], strict=True))
        )
        self.activation = equivariant_activation(spec.group)
        self.pool = MonomialPool(spec, channels[-1])
        n0, nL, L = spec.dims[0], spec.dims[-1], spec.num_layers
        n_poly = in_channels * (nL * n0 + nL + L - 1)
        self.register_buffer(
            "psi_io",
            torch.randn(n0, nL, generator=torch.Generator().manual_seed(len(channels))) / (n0 * nL) ** 0.5,
        )
        self.head = mlp_head(MonomialPool.num_outputs(spec, channels[-1]) + n_poly, head_hidden, out_features)

    def forward(self, ws: WeightSpace) -> Tensor:
        poly = torch.asinh(polynomial_invariants(ws, self.psi_io))  # squashes the high-degree products
        for layer in self.layers:
            ws = layer(ws).map(self.activation)
        return self.head(torch.cat([self.pool(ws), poly], dim=1))
