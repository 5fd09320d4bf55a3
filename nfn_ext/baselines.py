"""Baseline predictors of network properties: NP / HNP (from the ``nfn`` package), STATNN and a flat MLP.

They are the comparison points of the benchmarks and the trainer; only the NP/HNP models need ``nfn``
(imported when built), so ``nfn`` is not a dependency of the library itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .monomial import mlp_head
from .weight_space import WeightSpace, WeightSpaceSpec


def nfn_network_spec(spec: WeightSpaceSpec) -> object:
    """The :class:`nfn.common.NetworkSpec` of an architecture."""
    from nfn.common import network_spec_from_wsfeat

    ws = WeightSpace(
        [torch.zeros(1, 1, *layer.weight_shape) for layer in spec.layers],
        [torch.zeros(1, 1, layer.n_out) for layer in spec.layers],
        spec,
    )
    return network_spec_from_wsfeat(ws.to_nfn())


class NFNBaseline(nn.Module):
    """NP or HNP (Zhou et al., 2023) invariant predictor: ``nfn`` equivariant layers, pooling, MLP head.

    Args:
        spec: architecture of the input networks.
        kind: ``"np"`` (NPLinear with IO embeddings, NPPool) or ``"hnp"`` (HNPLinear, HNPPool).
        hidden_channels, head_hidden, out_features, in_channels: as in :class:`~nfn_ext.MonomialNFN`.
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        kind: str = "np",
        hidden_channels: Sequence[int] = (16, 16),
        head_hidden: int = 128,
        out_features: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        if kind not in ("np", "hnp"):
            raise ValueError(f"expected kind 'np' or 'hnp', got {kind!r}")
        net_spec = nfn_network_spec(spec)
        channels = [in_channels, *hidden_channels]
        layers: list[nn.Module] = []
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers.append(
                NPLinear(net_spec, a, b, io_embed=True) if kind == "np" else HNPLinear(net_spec, a, b)
            )
            layers.append(TupleOp(nn.ReLU()))
        pool = NPPool if kind == "np" else HNPPool
        self.layers = nn.Sequential(*layers, pool(net_spec), nn.Flatten())
        self.head = mlp_head(pool.get_num_outs(net_spec) * channels[-1], head_hidden, out_features)

    def forward(self, ws: WeightSpace) -> Tensor:
        return self.head(self.layers(ws.to_nfn()))


class StatNN(nn.Module):
    """STATNN (Unterthiner et al., 2020): mean, variance and quantiles of each weight and bias tensor, MLP."""

    def __init__(
        self, spec: WeightSpaceSpec, head_hidden: int = 128, out_features: int = 1, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.head = mlp_head(14 * spec.num_layers * in_channels, head_hidden, out_features)
        self.register_buffer("quantiles", torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))

    def forward(self, ws: WeightSpace) -> Tensor:
        feats = []
        for t in (*ws.weights, *ws.biases):
            t = t.flatten(2)
            q = torch.quantile(t, self.quantiles, dim=-1).permute(1, 2, 0)  # (B, C, 5)
            feats.append(torch.cat([t.mean(-1, keepdim=True), t.var(-1, keepdim=True), q], dim=-1).flatten(1))
        return self.head(torch.cat(feats, dim=1))


class FlatMLP(nn.Module):
    """All weights and biases flattened into one vector, then an MLP (no symmetry)."""

    def __init__(
        self, spec: WeightSpaceSpec, head_hidden: int = 128, out_features: int = 1, in_channels: int = 1
    ) -> None:
        super().__init__()
        n_params = sum(layer.n_out * layer.n_in * layer.filter_size + layer.n_out for layer in spec.layers)
        self.head = mlp_head(n_params * in_channels, head_hidden, out_features)

    def forward(self, ws: WeightSpace) -> Tensor:
        return self.head(ws.flatten().flatten(1))
