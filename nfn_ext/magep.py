r"""MAGEP-NFN (Vo et al., ICML 2025): polynomial layers equivariant to the monomial group.

With ``W_{(s,t)} = W^{(s)} \cdots W^{(t+1)}`` (which transforms as ``g_s W_{(s,t)} g_t^{-1}``) and fixed
random contractions of the fixed input/output dimensions, one per ``(s, t)`` and per channel,
``Psi_{s,t}`` ``(n_0, n_L)`` and ``psi_{s,t}`` ``(n_L,)``, the authors' layer (``HNPSMixerLinear`` of
Fsoft-AIC/MAGEP-NFN) builds

.. math::
    [WW]_{(s,t)} = W_{(s,0)} \Psi_{s,t} W_{(L,t)}, \qquad [bW]_{(s,t)} = b^{(s)} \psi_{s,t}^\top W_{(L,t)},
    \qquad \beta^{(s)} = \sum_{t \le s} W_{(s,t)} b^{(t)},

and maps them, per output, with the Monomial-NFN sharing template:

- weight ``s``: ``W^{(s)}``, ``[WW]_{(s,s-1)}``, ``[bW]_{(s,s-1)}`` (plus ``b^{(1)}`` for ``s = 1``);
- hidden bias ``1 < s < L``: ``b^{(s)}``, ``beta^{(s)}`` and, contracted over the input index with learned
  ``(C', C, n_0)`` tensors, ``W_{(s,0)}``, ``[WW]_{(s,0)}``, ``[bW]_{(s,0)}`` (for ``s = 1`` the first-layer
  template already maps ``W^{(1)}``, ``[WW]_{(1,0)}``, ``[bW]_{(1,0)}`` to the bias);
- last bias: ``b^{(L)}``, ``beta^{(L)}``, the full contractions (learned ``(C', C, n_L, n_0, n_L)``) of
  ``W_{(L,0)}``, ``[WW]_{(L,0)}``, ``[bW]_{(L,0)}``, and learned maps of the invariant traces
  ``tr [WW]_{(s,s)}`` and ``tr [bW]_{(s,s)}`` (``0 < s < L``) to ``(C', n_L)``; plus a constant.

Ours: every polynomial term is divided by the invariant ``1 + ||W_{(L,0)}||_F`` (per network and channel),
which keeps stacked layers finite; for convolutions the products use the kernel-summed weights
``sum_{uv} W_{:,:,u,v}`` (the group acts on every kernel position alike, so this is still equivariant); the
authors' ``sum_t W_{(s,t)} b^{(t)}`` with one shared weight is ``beta^{(s)} - b^{(s)}``, the same span.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .monomial import (
    MonomialMixing,
    MonomialPool,
    channels_to_kernels,
    dense,
    equivariant_activation,
    kernels_to_channels,
    mlp_head,
    wide_rank,
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


def ww_term(left: Tensor, psi: Tensor, right: Tensor) -> Tensor:
    """``[WW] = W_{(s,0)} Psi W_{(L,t)}`` per channel: ``(B, C, n_s, n_0) (C, n_0, n_L) (B, C, n_L, n_t)``."""
    return left @ psi @ right


def bw_term(bias: Tensor, psi: Tensor, right: Tensor) -> Tensor:
    """``[bW] = b^{(s)} psi^T W_{(L,t)}`` per channel.

    Shapes: ``(B, C, n_s)``, ``(C, n_L)``, ``(B, C, n_L, n_t)`` -> ``(B, C, n_s, n_t)``."""
    return bias.unsqueeze(-1) * torch.einsum("cp,bcpk->bck", psi, right).unsqueeze(-2)


class MAGEPLinear(nn.Module):
    """MAGEP-NFN polynomial equivariant layer ``WeightSpace(C_in) -> WeightSpace(C_out)``.

    Args:
        spec: architecture of the input networks.
        in_channels, out_channels: feature channels.
        seed: seed of the fixed contractions ``Psi_{s,t}`` and ``psi_{s,t}`` (buffers, one per ``(s, t)``
            and channel).
        rank: ``None`` for the authors' dense maps; an integer factorises the maps on the fixed
            input/output widths as in :class:`~nfn_ext.MonomialLinear` (the last-bias contraction has
            ``3 C C' n_L^2 n_0`` parameters when dense).

    Shapes:
        - input: :class:`WeightSpace` ``(B, C_in, ...)``
        - output: :class:`WeightSpace` ``(B, C_out, ...)``
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        in_channels: int,
        out_channels: int,
        seed: int = 0,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.in_channels, self.out_channels, self.rank = spec, in_channels, out_channels, rank
        n0, nL, L = spec.dims[0], spec.dims[-1], spec.num_layers
        C = in_channels
        facs = [layer.filter_size for layer in spec.layers]
        gen = torch.Generator().manual_seed(seed)

        def psi(count: int, *shape: int) -> Tensor:
            return torch.randn(count, C, *shape, generator=gen) / (n0 * nL) ** 0.5

        # (s, s-1) for weight s = 1..L; (s, 0) for bias s = 2..L; (s, s) for the traces s = 1..L-1
        self.register_buffer("psi_ww_weight", psi(L, n0, nL))
        self.register_buffer("psi_bw_weight", psi(L, nL))
        self.register_buffer("psi_ww_bias", psi(L - 1, n0, nL))
        self.register_buffer("psi_bw_bias", psi(L - 1, nL))
        self.register_buffer("psi_ww_trace", psi(L - 1, n0, nL))
        self.register_buffer("psi_bw_trace", psi(L - 1, nL))
        self.mixing = MonomialMixing(
            spec.dims,
            [C * (f + 2) for f in facs],
            [2 * C] * L,
            [out_channels * f for f in facs],
            [out_channels] * L,
            spec.group == "sign",
            rank,
        )
        rank_in = wide_rank(n0, rank)
        self.hidden_bias_products = nn.ModuleList(
            dense(3 * C * n0, out_channels, rank_in) for _ in range(L - 2)
        )
        self.last_bias_products = dense(3 * C * nL * n0, out_channels * nL, rank_in or wide_rank(nL, rank))
        self.last_bias_traces = nn.Linear(2 * C * (L - 1), out_channels * nL, bias=False)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, ws: WeightSpace) -> WeightSpace:
        """``ws`` may also be ``nfn``'s ``WeightSpaceFeatures``; the output is then one too."""
        features, ws = ws, WeightSpace.coerce(ws, self.spec)
        if ws.channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {ws.channels}")
        L = ws.num_layers
        forward, backward, beta = weight_products(ws)
        # invariant per-network, per-channel scale 1 + ||W_(L,0)||_F: dividing by it keeps equivariance and
        # stops the degree-(L+1) products from overflowing when layers are stacked
        inv = 1.0 / (1.0 + torch.linalg.vector_norm(forward[-1], dim=(2, 3)))  # (B, C)
        inv2 = inv[..., None, None]
        weights, biases = [], []
        for l, (w, b) in enumerate(zip(ws.weights, ws.biases, strict=True)):
            x = ww_term(forward[l], self.psi_ww_weight[l], backward[l]) * inv2  # (B, C, n_{l+1}, n_l)
            y = bw_term(b, self.psi_bw_weight[l], backward[l]) * inv2
            weights.append(torch.cat([kernels_to_channels(w), x, y], dim=1))
            biases.append(torch.cat([b, beta[l] * inv[..., None]], dim=1))
        out_w, out_b = self.mixing(weights, biases)
        # bias s = l + 1 >= 2: W_(s,0), [WW]_(s,0), [bW]_(s,0), all (B, C, n_s, n_0)
        for l in range(1, L):
            products = (
                torch.cat(
                    [
                        forward[l],
                        ww_term(forward[l], self.psi_ww_bias[l - 1], forward[-1]),
                        bw_term(ws.biases[l], self.psi_bw_bias[l - 1], forward[-1]),
                    ],
                    dim=1,
                )
                * inv.repeat(1, 3)[..., None, None]
            )
            if l < L - 1:  # contract the input index
                out_b[l] = out_b[l] + self.hidden_bias_products[l - 1](
                    products.transpose(1, 2).flatten(2)
                ).transpose(1, 2)
            else:  # full contraction
                out_b[l] = out_b[l] + self.last_bias_products(products.flatten(1)).unflatten(
                    1, (-1, self.spec.dims[-1])
                )
        traces = [
            torch.einsum("bcjp,cpq,bcqj->bc", forward[s - 1], self.psi_ww_trace[s - 1], backward[s])
            for s in range(1, L)
        ] + [
            torch.einsum("bcj,cp,bcpj->bc", ws.biases[s - 1], self.psi_bw_trace[s - 1], backward[s])
            for s in range(1, L)
        ]
        out_b[-1] = out_b[-1] + self.last_bias_traces(
            torch.cat(traces, dim=1) * inv.repeat(1, 2 * (L - 1))
        ).unflatten(1, (-1, self.spec.dims[-1]))
        out_w = [
            channels_to_kernels(w, layer.kernel) for w, layer in zip(out_w, self.spec.layers, strict=True)
        ]
        out = WeightSpace(out_w, out_b, ws.spec)
        return out if features is ws else out.to_nfn()

    def extra_repr(self) -> str:
        rank = "" if self.rank is None else f", rank={self.rank}"
        group = self.spec.group
        return f"{self.in_channels}, {self.out_channels}, dims={self.spec.dims}, group={group!r}{rank}"


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
        rank: passed to every :class:`MAGEPLinear` (``None``: the authors' dense maps).

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
        rank: int | None = None,
    ) -> None:
        super().__init__()
        channels = [in_channels, *hidden_channels]
        self.layers = nn.ModuleList(
            MAGEPLinear(spec, a, b, seed=i, rank=rank)
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
        ws = WeightSpace.coerce(ws, self.pool.spec)
        poly = torch.asinh(polynomial_invariants(ws, self.psi_io))  # squashes the high-degree products
        for layer in self.layers:
            ws = layer(ws).map(self.activation)
        return self.head(torch.cat([self.pool(ws), poly], dim=1))
