"""Baseline predictors on :class:`TransformerWeightSpace`: a flat MLP, an NP-style permutation-only model and
STATNN-style weight statistics (for scikit-learn's gradient boosting).

Only the permutation-only model respects part of the attention group (head and hidden-neuron permutations);
none of them is invariant to the per-head ``GL`` maps, which is what the benchmark measures.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .monomial import mlp_head
from .transformer_space import FIELDS, TransformerWeightSpace, TransformerWeightSpaceSpec


def _with_io(feats: Tensor, io: Tensor | None, io_features: int) -> Tensor:
    """``[feats, io]`` when the model was built for ``io_features`` extra inputs (checked)."""
    if not io_features:
        return feats
    if io is None or io.shape != (feats.shape[0], io_features):
        got = None if io is None else tuple(io.shape)
        raise ValueError(f"expected io weights of shape {(feats.shape[0], io_features)}, got {got}")
    return torch.cat([feats, io.to(feats.dtype)], dim=-1)


class TransformerFlatMLP(nn.Module):
    """Every weight and bias flattened into one vector (with ``io_features`` extra weights appended, such as
    the zoo's embedding and classifier), then an MLP (no symmetry)."""

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        head_hidden: int = 64,
        out_features: int = 1,
        in_channels: int = 1,
        io_features: int = 0,
    ) -> None:
        super().__init__()
        self.io_features = io_features
        self.head = mlp_head(spec.num_params * in_channels + io_features, head_hidden, out_features)

    def forward(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> Tensor:
        return self.head(_with_io(ws.flatten().flatten(1), io, self.io_features))


class TransformerPermutationNFN(nn.Module):
    r"""NP-style (Zhou et al., 2023) invariant model for the permutation part of the group only.

    Each head's ``(W_Q, b_Q, W_K, b_K, W_V, b_V, W_O)`` and each hidden neuron's ``(W_A[:, j], b_A[j],
    W_B[j, :])`` is embedded by a shared MLP and mean-pooled (DeepSets), per block; with ``b_O``, ``b_B`` (and
    ``io_features`` extra weights) an MLP head predicts. Invariant to head and hidden-neuron permutations, not
    to the ``GL`` maps ``M``, ``N``.
    """

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        hidden: int = 32,
        head_hidden: int = 64,
        out_features: int = 1,
        io_features: int = 0,
    ) -> None:
        super().__init__()
        self.io_features = io_features
        D, K, V = spec.d_model, spec.d_qk, spec.d_v
        self.head_embed = nn.Sequential(
            nn.Linear(2 * (D + 1) * K + (D + 1) * V + V * D, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
        )
        self.neuron_embed = nn.Sequential(nn.Linear(2 * D + 1, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = mlp_head(spec.num_blocks * (2 * hidden + 2 * D) + io_features, head_hidden, out_features)

    def forward(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> Tensor:
        if ws.channels != 1:
            raise ValueError(f"expected a weight space with 1 channel, got {ws.channels}")
        t = {name: getattr(ws, name)[:, 0] for name in FIELDS}  # (B, L, ...)
        per_head = torch.cat(
            [t["wq"].flatten(-2), t["bq"], t["wk"].flatten(-2), t["bk"], t["wv"].flatten(-2), t["bv"],
             t["wo"].flatten(-2)], dim=-1,
        )  # fmt: skip
        heads = self.head_embed(per_head).mean(2)  # (B, L, hidden)
        per_neuron = torch.cat([t["wa"].transpose(-1, -2), t["ba"][..., None], t["wb"]], dim=-1)
        neurons = self.neuron_embed(per_neuron)
        neurons = (
            neurons.mean(2) if neurons.shape[2] else neurons.new_zeros(*neurons.shape[:2], neurons.shape[-1])
        )
        feats = torch.cat([heads, neurons, t["bo"], t["bb"]], dim=-1).flatten(1)
        return self.head(_with_io(feats, io, self.io_features))


_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def weight_statistics(ws: TransformerWeightSpace) -> Tensor:
    """STATNN features (Unterthiner et al., 2020): mean, variance and quantiles 0, 1/4, 1/2, 3/4, 1 of every
    tensor of every block. Returns ``(B, C * L * 12 * 7)``, ordered (channel, block, tensor of
    :data:`~nfn_ext.transformer_space.FIELDS`, statistic)."""
    q = torch.tensor(_QUANTILES, dtype=ws.wq.dtype)
    feats = []
    for name in FIELDS:
        t = getattr(ws, name)
        t = t.flatten(3) if t.shape[3:].numel() else t.new_zeros(*t.shape[:3], 1)  # (B, C, L, n)
        quant = torch.quantile(t, q, dim=-1).permute(1, 2, 3, 0)
        feats.append(torch.cat([t.mean(-1, keepdim=True), t.var(-1, keepdim=True, correction=0), quant], -1))
    return torch.cat(feats, dim=-1).flatten(1)
