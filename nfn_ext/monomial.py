"""Monomial-NFN (Tran et al., NeurIPS 2024): layers equivariant/invariant to the monomial group.

Scalings kill every row, column and global sum of the NP/HNP layers; what survives (channels ``m <- n``):

.. math::
    \\text{hidden } l:\\quad W'_{m,jk} = \\sum_n A_{mn} W_{n,jk}, \\qquad b'_{m,j} = \\sum_n B_{mn} b_{n,j}

    \\text{first}:\\quad W'_{m,jk} = \\sum_{n,q} A_{mnqk} W_{n,jq} + \\sum_n B_{mnk} b_{n,j}, \\qquad
    b'_{m,j} = \\sum_{n,q} C_{mnq} W_{n,jq} + \\sum_n D_{mn} b_{n,j}

    \\text{last}:\\quad W'_{m,jk} = \\sum_{n,p} A_{mnpj} W_{n,pk}, \\qquad
    b'_{m,j} = \\sum_{n,p} B_{mnpj} b_{n,p} + \\tau_{mj}

and, for sign flips only, ``W'^{(L)}_{m,jk} += sum_n E_{mnj} b^{(L-1)}_{n,k}`` and
``b'^{(L-1)}_{m,j} += sum_{n,p} F_{mnp} W^{(L)}_{n,pj}``. Conv kernel positions are treated as channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .weight_space import WeightSpace, WeightSpaceSpec


def kernels_to_channels(w: Tensor) -> Tensor:
    """``(B, C, n_out, n_in, kh, kw) -> (B, C*kh*kw, n_out, n_in)`` (identity for matrices)."""
    if w.dim() == 4:
        return w
    B, C, n_out, n_in = w.shape[:4]
    return w.flatten(4).permute(0, 1, 4, 2, 3).reshape(B, -1, n_out, n_in)


def channels_to_kernels(w: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`kernels_to_channels` for kernel shape ``kernel``."""
    if not kernel:
        return w
    B, _, n_out, n_in = w.shape
    k = w.shape[1] // (kernel[0] * kernel[1])
    return (
        w.reshape(B, k, kernel[0] * kernel[1], n_out, n_in)
        .permute(0, 1, 3, 4, 2)
        .reshape(B, k, n_out, n_in, *kernel)
    )


def scale_normalize(x: Tensor, dim: int = 1) -> Tensor:
    """``x / ||x||_2`` along ``dim`` (0 where ``x = 0``), computed as ``y / ||y||`` with ``y = x / max|x|`` so
    that entries scaled by ``1e-8`` (a 1e4 group action) do not underflow when squared."""
    peak = x.abs().amax(dim=dim, keepdim=True)
    y = x / peak.clamp_min(torch.finfo(x.dtype).tiny)
    return y / torch.linalg.vector_norm(y, dim=dim, keepdim=True).clamp_min(1.0)


#: Default rank of the invariant :class:`MonomialNFN` (the layers' own default is the complete ``None``).
DEFAULT_RANK = 8


def equivariant_activation(group: str) -> nn.Module:
    """ReLU commutes with positive scalings; tanh (odd) commutes with sign flips."""
    return nn.ReLU() if group == "scale" else nn.Tanh()


class FactorisedLinear(nn.Module):
    r"""A rank-``r`` map plus per-position channel mixing, in place of a dense map on a fixed-width vector.

    The input ``x = [u, e]`` holds ``u`` ``(C_in, n)`` (channels of ``n`` positions of a fixed input or output
    dimension, flattened channel-major) and ``e`` ``(E_in,)`` (extra features); likewise the output. Then

    .. math::
        y = \begin{pmatrix} A \otimes I_n & 0 \\ 0 & D \end{pmatrix} x + U V x (+ c),

    with ``A`` ``(C_out, C_in)``, ``D`` ``(E_out, E_in)``, ``V`` ``(r, C_in n + E_in)``,
    ``U`` ``(C_out n + E_out, r)``. It is still a linear map of ``x`` (so equivariant wherever the dense one
    is), with ``O(C C' + r (C + C') n)`` parameters instead of ``O(C C' n^2)``.

    Args:
        n: the fixed width (``n_0`` or ``n_L``).
        in_blocks, in_extra, out_blocks, out_extra: ``C_in``, ``E_in``, ``C_out``, ``E_out``.
        rank: ``r``.
        bias: add a constant ``c`` (the ``tau`` of the last bias).

    Shapes:
        - input: ``(*, C_in n + E_in)``; output: ``(*, C_out n + E_out)``
    """

    def __init__(
        self, n: int, in_blocks: int, in_extra: int, out_blocks: int, out_extra: int, rank: int, bias: bool
    ) -> None:
        super().__init__()
        self.n, self.in_blocks, self.out_blocks = n, in_blocks, out_blocks
        self.channel = nn.Parameter(torch.empty(out_blocks, in_blocks))
        self.extra = nn.Linear(in_extra, out_extra, bias=False) if in_extra and out_extra else None
        self.down = nn.Linear(in_blocks * n + in_extra, rank, bias=False)
        self.up = nn.Linear(rank, out_blocks * n + out_extra, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.channel, a=5**0.5)
        for m in (self.extra, self.down, self.up):
            if m is not None:
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        split = self.in_blocks * self.n
        u = x[..., :split].unflatten(-1, (self.in_blocks, self.n))
        direct = torch.einsum("oc,...cn->...on", self.channel, u).flatten(-2)
        if self.extra is not None:
            direct = torch.cat([direct, self.extra(x[..., split:])], dim=-1)
        elif direct.shape[-1] != self.up.out_features:
            direct = nn.functional.pad(direct, (0, self.up.out_features - direct.shape[-1]))
        return direct + self.up(self.down(x))


def dense(in_features: int, out_features: int, rank: int | None = None, bias: bool = False) -> nn.Module:
    """``nn.Linear``, or the rank-``rank`` product of two when that has at most half the parameters."""
    if rank is None or 2 * rank * (in_features + out_features) > in_features * out_features:
        return nn.Linear(in_features, out_features, bias=bias)
    return nn.Sequential(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias))


def wide_rank(n: int, rank: int | None) -> int | None:
    """``rank`` for a fixed width ``n > 2 rank`` (where a rank-``rank`` map is a saving), else ``None``."""
    return rank if rank is not None and n > 2 * rank else None


def fixed_width_linear(
    n: int,
    in_blocks: int,
    in_extra: int,
    out_blocks: int,
    out_extra: int,
    rank: int | None,
    bias: bool = False,
) -> nn.Module:
    """The dense map on ``[u (in_blocks, n), e (in_extra)]`` (complete), or :class:`FactorisedLinear` when
    ``rank`` is set and that has at most half the parameters (e.g. not for ``n = 1``)."""
    n_in, n_out = in_blocks * n + in_extra, out_blocks * n + out_extra
    factorised = rank * (n_in + n_out) + in_blocks * out_blocks + in_extra * out_extra if rank else 0
    if rank is None or 2 * factorised > n_in * n_out:  # keep the complete map unless it halves the count
        return nn.Linear(n_in, n_out, bias=bias)
    return FactorisedLinear(n, in_blocks, in_extra, out_blocks, out_extra, rank, bias)


class MonomialMixing(nn.Module):
    """The Monomial-NFN linear map on flat features (kernels already folded into channels).

    Args:
        dims: ``(n_0, ..., n_L)``.
        in_weight, in_bias, out_weight, out_bias: feature counts per layer (``F_l``, ``G_l``, ...).
        sign: add the sign-flip terms ``E``, ``F`` (and ``G``, ``H`` for two-layer networks).
        rank: ``None`` for the complete layer; else the maps on a fixed input/output width ``n > 2 rank``
            (``A`` of the first layer for ``n_0``; ``A`` and ``B`` of the last layer and the sign-flip terms
            for ``n_L``) are :class:`FactorisedLinear` / rank-``rank`` products where that at least halves
            their parameters.

    Shapes:
        - input: ``weights[l]`` ``(B, F_l, n_{l+1}, n_l)``, ``biases[l]`` ``(B, G_l, n_{l+1})``
        - output: the same with the ``out_*`` feature counts.
    """

    def __init__(
        self,
        dims: Sequence[int],
        in_weight: Sequence[int],
        in_bias: Sequence[int],
        out_weight: Sequence[int],
        out_bias: Sequence[int],
        sign: bool,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        L = len(dims) - 1
        if L < 2:
            raise ValueError(f"expected at least 2 weight layers, got {L}")
        if rank is not None and rank < 1:
            raise ValueError(f"expected rank None or >= 1, got {rank}")
        self.dims, self.sign, self.rank = tuple(dims), sign, rank
        self.out_weight, self.out_bias = tuple(out_weight), tuple(out_bias)
        n0, nL = dims[0], dims[-1]
        rank_in, rank_out = wide_rank(n0, rank), wide_rank(nL, rank)
        self.first = fixed_width_linear(n0, in_weight[0], in_bias[0], out_weight[0], out_bias[0], rank_in)
        self.hidden_weight = nn.ParameterList(
            nn.Parameter(torch.empty(out_weight[l], in_weight[l])) for l in range(1, L - 1)
        )
        self.hidden_bias = nn.ParameterList(
            nn.Parameter(torch.empty(out_bias[l], in_bias[l])) for l in range(1, L - 1)
        )
        self.last_weight = fixed_width_linear(nL, in_weight[-1], 0, out_weight[-1], 0, rank_out)
        self.last_bias = fixed_width_linear(nL, in_bias[-1], 0, out_bias[-1], 0, rank_out, bias=True)
        if sign:
            self.sign_e = dense(in_bias[-2], out_weight[-1] * nL, rank_out)
            self.sign_f = dense(in_weight[-1] * nL, out_bias[-2], rank_out)
            if L == 2:  # d_j = 1 / d_j: rows of W(1) and columns of W(2) move alike
                self.sign_g = dense(in_weight[0] * n0, out_weight[-1] * nL, rank_in or rank_out)
                self.sign_h = dense(in_weight[-1] * nL, out_weight[0] * n0, rank_in or rank_out)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (*self.hidden_weight, *self.hidden_bias):
            nn.init.kaiming_uniform_(p, a=5**0.5)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(
        self, weights: Sequence[Tensor], biases: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        L, B = len(self.dims) - 1, weights[0].shape[0]
        out_w: list[Tensor] = [torch.empty(0)] * L
        out_b: list[Tensor] = [torch.empty(0)] * L
        # first layer: each row j (hidden unit of layer 1) with its bias is one feature vector
        n0, n1 = self.dims[0], self.dims[1]
        w_rows = weights[0].transpose(1, 2).reshape(B, n1, -1)
        y = self.first(torch.cat([w_rows, biases[0].transpose(1, 2)], dim=2))
        # last layer: each column k (hidden unit of layer L-1) is one feature vector
        nL, nLm1 = self.dims[-1], self.dims[-2]
        cols = weights[-1].permute(0, 3, 1, 2).reshape(B, nLm1, -1)
        z = self.last_weight(cols)
        if self.sign:
            z = z + self.sign_e(biases[-2].transpose(1, 2))
            if L == 2:
                z = z + self.sign_g(w_rows)
                fo = self.out_weight[0] * n0
                y = y + nn.functional.pad(self.sign_h(cols), (0, y.shape[-1] - fo))
        fo = self.out_weight[0] * n0
        out_w[0] = y[..., :fo].reshape(B, n1, -1, n0).transpose(1, 2)
        out_b[0] = y[..., fo:].transpose(1, 2)
        for l in range(1, L - 1):
            out_w[l] = torch.einsum("oc,bcjk->bojk", self.hidden_weight[l - 1], weights[l])
            out_b[l] = torch.einsum("oc,bcj->boj", self.hidden_bias[l - 1], biases[l])
        if self.sign:
            out_b[-2] = out_b[-2] + self.sign_f(cols).transpose(1, 2)
        out_w[-1] = z.reshape(B, nLm1, -1, nL).permute(0, 2, 3, 1)
        out_b[-1] = self.last_bias(biases[-1].flatten(1)).reshape(B, -1, nL)
        return out_w, out_b


class MonomialLinear(nn.Module):
    """Monomial-NFN equivariant linear layer ``WeightSpace(C_in) -> WeightSpace(C_out)``.

    Args:
        spec: architecture of the input networks (its activation picks scalings or sign flips).
        in_channels, out_channels: feature channels.
        rank: ``None`` (default) for the complete layer, which spans every equivariant linear map; an
            integer factorises the maps on fixed input/output widths wider than ``2 rank``
            (:class:`FactorisedLinear`), which drops the ``C C' n_0^2`` first-layer term to
            ``C C' + r (C + C') n_0`` parameters.

    Shapes:
        - input: :class:`WeightSpace` with ``weights[l]`` ``(B, C_in, n_{l+1}, n_l[, kh, kw])``
        - output: :class:`WeightSpace` with ``C_out`` channels.
    """

    def __init__(
        self, spec: WeightSpaceSpec, in_channels: int, out_channels: int, rank: int | None = None
    ) -> None:
        super().__init__()
        self.spec, self.in_channels, self.out_channels, self.rank = spec, in_channels, out_channels, rank
        facs = [layer.filter_size for layer in spec.layers]
        L = spec.num_layers
        self.mixing = MonomialMixing(
            spec.dims,
            [in_channels * f for f in facs],
            [in_channels] * L,
            [out_channels * f for f in facs],
            [out_channels] * L,
            spec.group == "sign",
            rank,
        )

    def reset_parameters(self) -> None:
        self.mixing.reset_parameters()

    def forward(self, ws: WeightSpace) -> WeightSpace:
        """``ws`` may also be ``nfn``'s ``WeightSpaceFeatures``; the output is then one too."""
        features, ws = ws, WeightSpace.coerce(ws, self.spec)
        if ws.channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {ws.channels}")
        out_w, out_b = self.mixing([kernels_to_channels(w) for w in ws.weights], ws.biases)
        out_w = [
            channels_to_kernels(w, layer.kernel) for w, layer in zip(out_w, self.spec.layers, strict=True)
        ]
        out = WeightSpace(out_w, out_b, ws.spec)
        return out if features is ws else out.to_nfn()

    def extra_repr(self) -> str:
        rank = "" if self.rank is None else f", rank={self.rank}"
        return (
            f"{self.in_channels}, {self.out_channels}, dims={self.spec.dims}, group={self.spec.group!r}{rank}"
        )


class MonomialPool(nn.Module):
    """Scale/sign-invariant pooling ``WeightSpace(C) -> (B, D)``.

    Each entry's channel vector ``x`` (kernel positions included) becomes ``x / ||x||_2`` (positive
    scalings) or ``|x|`` (sign flips), then ``a_c x_c + c_c``; then HNP-style means: the first weight over
    rows, the last over columns, hidden weights and biases over all entries; the last bias is kept
    (it is invariant already).
    """

    def __init__(self, spec: WeightSpaceSpec, channels: int) -> None:
        super().__init__()
        self.spec, self.channels = spec, channels
        self.scale = nn.Parameter(torch.empty(2, channels))
        self.shift = nn.Parameter(torch.empty(2, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)
        nn.init.zeros_(self.shift)

    @staticmethod
    def num_outputs(spec: WeightSpaceSpec, channels: int) -> int:
        facs = [layer.filter_size for layer in spec.layers]
        n0, nL, L = spec.dims[0], spec.dims[-1], spec.num_layers
        return channels * (facs[0] * n0 + sum(facs[1:-1]) + facs[-1] * nL + (L - 1) + nL)

    def _invariant(self, x: Tensor, kind: int) -> Tensor:
        x = scale_normalize(x.flatten(1, 2)).reshape(x.shape) if self.spec.group == "scale" else x.abs()
        shape = (1, self.channels, 1, *(1,) * (x.dim() - 3))
        return x * self.scale[kind].view(shape) + self.shift[kind].view(shape)

    def forward(self, ws: WeightSpace) -> Tensor:
        ws = WeightSpace.coerce(ws, self.spec)
        L, out = ws.num_layers, []
        for l, (w, b) in enumerate(zip(ws.weights, ws.biases, strict=True)):
            w = self._invariant(
                kernels_to_channels(w).unflatten(1, (self.channels, -1)), 0
            )  # (B, C, k, o, i)
            if l == 0:
                out.append(w.mean(dim=3).flatten(1))
            elif l == L - 1:
                out.append(w.mean(dim=4).flatten(1))
            else:
                out.append(w.mean(dim=(3, 4)).flatten(1))
            if l < L - 1:
                out.append(self._invariant(b.unsqueeze(2), 1).mean(dim=(2, 3)))
            else:
                out.append(b.flatten(1))
        return torch.cat(out, dim=1)


def mlp_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """The MLP head shared by every invariant model: ``Linear, ReLU, Linear, ReLU, Linear``."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


class MonomialNFN(nn.Module):
    """Invariant Monomial-NFN: equivariant layers, invariant pooling, MLP head.

    Args:
        spec: architecture of the input networks.
        hidden_channels: channels of the equivariant layers.
        head_hidden: width of the MLP head.
        out_features: outputs per network (e.g. 1 logit for test-accuracy prediction).
        in_channels: channels of the input weight space.
        rank: passed to every :class:`MonomialLinear`; default :data:`DEFAULT_RANK` (factorised maps on
            fixed widths above 16, e.g. the 64 input pixels of the MLP zoo, where it measured as good as the
            complete layer); ``None`` for the complete layers.

    Shapes:
        - input: :class:`WeightSpace` ``(B, in_channels, ...)``
        - output: ``(B, out_features)``, invariant to :class:`~nfn_ext.MonomialGroupElement` actions.
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        hidden_channels: Sequence[int] = (16, 16),
        head_hidden: int = 128,
        out_features: int = 1,
        in_channels: int = 1,
        rank: int | None = DEFAULT_RANK,
    ) -> None:
        super().__init__()
        channels = [in_channels, *hidden_channels]
        self.layers = nn.ModuleList(
            MonomialLinear(spec, a, b, rank) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.activation = equivariant_activation(spec.group)
        self.pool = MonomialPool(spec, channels[-1])
        self.head = mlp_head(MonomialPool.num_outputs(spec, channels[-1]), head_hidden, out_features)

    def forward(self, ws: WeightSpace) -> Tensor:
        ws = WeightSpace.coerce(ws, self.pool.spec)
        for layer in self.layers:
            ws = layer(ws).map(self.activation)
        return self.head(self.pool(ws))


class MonomialEquivariantNFN(nn.Module):
    """Equivariant Monomial-NFN for editing weights: ``ws -> delta`` with ``delta(g . ws) = g . delta(ws)``.

    Args:
        spec, hidden_channels, in_channels, out_channels: as in :class:`MonomialNFN`.
        rank: passed to every :class:`MonomialLinear` (default ``None``: the complete layers).

    Shapes:
        - input: :class:`WeightSpace` ``(B, in_channels, ...)``
        - output: :class:`WeightSpace` ``(B, out_channels, ...)``; e.g. ``ws + model(ws)`` edits a network.
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        hidden_channels: Sequence[int] = (16, 16),
        in_channels: int = 1,
        out_channels: int = 1,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        channels = [in_channels, *hidden_channels, out_channels]
        self.layers = nn.ModuleList(
            MonomialLinear(spec, a, b, rank) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.activation = equivariant_activation(spec.group)

    def forward(self, ws: WeightSpace) -> WeightSpace:
        """``ws`` may also be ``nfn``'s ``WeightSpaceFeatures``; the output is then one too."""
        for i, layer in enumerate(self.layers):
            ws = layer(ws)
            if i < len(self.layers) - 1:
                ws = ws.map(self.activation)
        return ws
