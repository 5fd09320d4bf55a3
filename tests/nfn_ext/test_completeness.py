"""Completeness: MonomialLinear spans every linear map that commutes with the group, computed numerically.

The equivariant linear maps ``M`` of a weight space are the null space of ``M P_g - P_g M = 0`` over random
group elements ``g`` (``P_g`` the action as a matrix); the layer's linear part spans a subspace of it (its
maps are equivariant). Completeness is equality of the dimensions.
"""

import pytest
import torch
from torch import nn

from nfn_ext import MonomialLinear, WeightSpace, random_group_element

from .helpers import ACTS


def _net(dims: tuple[int, ...], act: str, conv: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        if conv and not last:
            layers.append(nn.Conv2d(a, b, (1, 2)))
        else:
            if conv:
                layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            layers.append(nn.Linear(a, b))
        if not last:
            layers.append(ACTS[act]())
    return nn.Sequential(*layers)


def _basis(ws: WeightSpace, channels: int) -> WeightSpace:
    """Every unit vector of a ``channels``-channel weight space, as a batch ``(N, channels, ...)``."""
    template = ws.map(lambda t: torch.zeros(1, channels, *t.shape[2:], dtype=torch.float64))
    n = template.flatten().shape[-1] * channels
    eye = torch.eye(n, dtype=torch.float64)
    parts, offset = [[], []], 0
    for pair in zip(template.weights, template.biases, strict=True):
        for kind, t in enumerate(pair):
            size = t[0].numel()
            parts[kind].append(eye[:, offset : offset + size].reshape(n, *t.shape[1:]))
            offset += size
    return WeightSpace(parts[0], parts[1], ws.spec)


def _flat(ws: WeightSpace) -> torch.Tensor:
    return torch.cat([t.flatten(1) for pair in zip(ws.weights, ws.biases, strict=True) for t in pair], dim=1)


def equivariance_constraints(ws: WeightSpace, c_in: int, c_out: int, n_elements: int = 16) -> torch.Tensor:
    """Rows of ``vec(M P_g - P_g M) = 0`` for ``n_elements`` random group elements: ``(K, n_out n_in)``."""
    b_in, b_out = _basis(ws, c_in), _basis(ws, c_out)
    n_in, n_out = b_in.batch_size, b_out.batch_size
    rows = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(n_elements):
        g = random_group_element(
            ws[:1], scale_range=(0.3, 3.0) if ws.spec.group == "scale" else None, generator=gen
        )
        p_in_t = _flat(g.act(b_in)).contiguous()  # row i = g . e_i, i.e. P_in^T
        p_out = _flat(g.act(b_out)).T.contiguous()
        # vec(M P_in - P_out M) with M (n_out, n_in), row-major vec: (I kron P_in^T) - (P_out kron I)
        eye_out, eye_in = torch.eye(n_out, dtype=torch.float64), torch.eye(n_in, dtype=torch.float64)
        rows.append(torch.kron(eye_out, p_in_t) - torch.kron(p_out, eye_in))
    return torch.cat(rows)


def equivariant_dimension(ws: WeightSpace, c_in: int, c_out: int) -> int:
    """Dimension of ``{M : M P_g = P_g M for all g}``."""
    constraints = equivariance_constraints(ws, c_in, c_out)
    return constraints.shape[1] - int(torch.linalg.matrix_rank(constraints))


def layer_span(layer: nn.Module, ws: WeightSpace, c_in: int) -> torch.Tensor:
    """The linear maps ``x -> layer(x) - layer(0)`` for one-hot parameter vectors: ``(P, n_out n_in)``."""
    basis = _basis(ws, c_in)
    params = list(layer.parameters())
    maps = []
    with torch.no_grad():
        for p in params:
            p.zero_()
        for p in params:
            for i in range(p.numel()):
                p.view(-1)[i] = 1.0
                zero = _flat(layer(basis.map(torch.zeros_like)))
                maps.append((_flat(layer(basis)) - zero).T.flatten())  # (n_out, n_in) row-major
                p.view(-1)[i] = 0.0
    return torch.stack(maps)


CASES = [
    ((2, 3, 2), "tanh", False),
    ((1, 3, 2), "tanh", False),
    ((2, 3, 2), "relu", False),
    ((2, 3, 2, 2), "tanh", False),
    ((2, 3, 2, 2), "relu", False),
    ((1, 2, 2, 2, 1), "tanh", False),
    ((1, 2, 2, 2, 1), "leaky_relu", False),
    ((1, 2, 2), "tanh", True),
    ((1, 2, 2, 2), "relu", True),
]


# one channel everywhere; two input channels (channel mixing inside every term) on a 2- and a 3-layer net
CHANNEL_CASES = [(*case, 1, 1) for case in CASES] + [
    ((2, 3, 2), "tanh", False, 2, 1),
    ((2, 3, 2, 2), "relu", False, 2, 1),
]


@pytest.mark.parametrize(("dims", "act", "conv", "c_in", "c_out"), CHANNEL_CASES)
def test_monomial_linear_spans_every_equivariant_linear_map(
    dims: tuple[int, ...], act: str, conv: bool, c_in: int, c_out: int
) -> None:
    ws = WeightSpace.from_module(_net(dims, act, conv)).map(torch.Tensor.double)
    layer = MonomialLinear(ws.spec, c_in, c_out).double()
    span = layer_span(layer, ws, c_in)
    constraints = equivariance_constraints(ws, c_in, c_out)
    assert (constraints @ span.T).abs().max() < 1e-9  # every map of the layer is equivariant ...
    expected = constraints.shape[1] - int(torch.linalg.matrix_rank(constraints))
    assert int(torch.linalg.matrix_rank(span)) == expected  # ... and together they span all of them


def test_completeness_check_catches_a_missing_term() -> None:
    """Dropping the sign-flip term b(L-1) -> W(L) leaves the layer equivariant but incomplete."""
    ws = WeightSpace.from_module(_net((2, 3, 2, 2), "tanh", False)).map(torch.Tensor.double)
    layer = MonomialLinear(ws.spec, 1, 1).double()
    full = int(torch.linalg.matrix_rank(layer_span(layer, ws, 1)))
    layer.mixing.sign_e.weight.requires_grad_(False)
    layer.mixing.sign_e = _Zero()
    assert int(torch.linalg.matrix_rank(layer_span(layer, ws, 1))) < full == equivariant_dimension(ws, 1, 1)


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], 2, dtype=x.dtype)
