r"""Transformer-NFN: layers on :class:`TransformerWeightSpace` that commute with the attention group.

The group (:mod:`nfn_ext.transformer_group`) moves ``W_Q, W_K`` by ``M_h`` and ``W_V, W_O`` by ``N_h``, so
entrywise functions of ``W_Q`` are not equivariant; the per-head products (Tran et al., ICLR 2025)

.. math::
    S_h = \tilde W_Q^h \tilde W_K^{h\top} \in \mathbb{R}^{(D+1)\times(D+1)}, \qquad
    T_h = \tilde W_V^h W_O^h \in \mathbb{R}^{(D+1)\times D}, \qquad
    \tilde W = \begin{bmatrix} W \\ b \end{bmatrix},

are invariant up to the head permutation. Every term of :class:`TransformerLinear` multiplies a feature from
the side the group does not act on, by a learned ``D``-indexed matrix or by a matrix built from ``S``/``T``
(the ``D`` axis is fixed: models with residual connections have no symmetry there):

.. math::
    \tilde W_Q'^h = \sum_c a_c \tilde W_Q^{h,c} + F_Q \sum_c a'_c \tilde W_Q^{h,c}
      + \hat S_h^\top \sum_c a''_c \tilde W_Q^{h,c} + \bar S^\top \sum_c a'''_c \tilde W_Q^{h,c}

(``\hat S_h`` the channel mean of ``S_h / \|S_h\|_F``, ``\bar S`` its head mean; ``W_K`` uses ``\hat S_h``,
``W_V`` uses ``\hat T_h \hat T_h^\top`` and ``W_O`` is multiplied on the right by ``F_O`` and
``\hat T_h^\top \hat T_h``). The MLP features (hidden neurons permute, ``D`` is fixed) get a per-neuron
``D``-indexed map, and every invariant summary of every block (hidden-neuron means of the MLP weights,
``b_O``, ``b_B`` and, with ``attention_to_mlp``, the head means of ``S_h``, ``T_h``) through learned maps,
the same for every neuron, plus learned biases; ``b_O``, ``b_B`` get the same summaries. The linear part
spans every linear equivariant map (tested numerically).
Pointwise nonlinearities are applied to the MLP features and ``b_O`` only: on attention features they would
break the ``GL`` equivariance. :class:`TransformerInvariantPool` pools ``S_h``, ``T_h`` over heads and the
MLP features over hidden neurons; :class:`TransformerNFN` stacks both and an MLP head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .transformer_space import TransformerWeightSpace, TransformerWeightSpaceSpec

_EPS = 1e-12
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _augment(w: Tensor, b: Tensor) -> Tensor:
    """``[W; b]``: ``(..., D, d)`` and ``(..., d)`` -> ``(..., D + 1, d)``."""
    return torch.cat([w, b.unsqueeze(-2)], dim=-2)


def head_invariants(ws: TransformerWeightSpace) -> tuple[Tensor, Tensor]:
    r"""``S_h = [W_Q; b_Q][W_K; b_K]^T`` ``(B, C, L, H, D+1, D+1)`` and ``T_h = [W_V; b_V] W_O``
    ``(B, C, L, H, D+1, D)``."""
    q, k, v = _augment(ws.wq, ws.bq), _augment(ws.wk, ws.bk), _augment(ws.wv, ws.bv)
    return q @ k.transpose(-1, -2), v @ ws.wo


def _mean(t: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """Mean over ``dim``; zeros when that axis is empty (a bare attention layer has ``D_A = 0``)."""
    if t.shape[dim] == 0:
        shape = list(t.shape)
        shape[dim] = 1
        out = t.new_zeros(shape)
        return out if keepdim else out.squeeze(dim)
    return t.mean(dim, keepdim=keepdim)


def _unit(t: Tensor) -> Tensor:
    """``t / ||t||_F`` over the last two axes (0 stays 0)."""
    return t / t.flatten(-2).norm(dim=-1).clamp_min(_EPS)[..., None, None]


def block_summary(ws: TransformerWeightSpace, attention: bool = False) -> Tensor:
    r"""Invariant summary of every block ``(B, C, L, G)``: the hidden-neuron means of ``[W_A; b_A]``
    (``D+1``) and of ``W_B`` (``D``), ``b_O`` and ``b_B`` (``G = 4D + 1``); with ``attention``, the head
    means of ``S_h`` and ``T_h`` entry by entry (``G = (D+1)(2D+1)``, see :func:`head_invariants`) instead."""
    if attention:
        s, t = head_invariants(ws)
        return torch.cat([s.mean(3).flatten(3), t.mean(3).flatten(3)], dim=-1)
    return torch.cat([_mean(_augment(ws.wa, ws.ba), -1), _mean(ws.wb, -2), ws.bo, ws.bb], dim=-1)


class TransformerLinear(nn.Module):
    r"""Equivariant layer ``TransformerWeightSpace (C_in channels) -> TransformerWeightSpace (C_out)``.

    Attention features (per block ``l``, head ``h``; ``\hat S``, ``\hat T`` the normalised head invariants):

    .. math::
        \tilde W_Q'^h = \sum_c a_c \tilde W_Q^{h,c} + F_Q \sum_c a'_c \tilde W_Q^{h,c}
          + \hat S_h^\top \sum_c a''_c \tilde W_Q^{h,c} + \bar{\hat S}^\top \sum_c a'''_c \tilde W_Q^{h,c},
        \qquad W_O'^h = \sum_c a_c W_O^{h,c} + \big(\sum_c a'_c W_O^{h,c}\big) F_O + \dots

    (``W_K`` with ``\hat S_h``, ``W_V`` with ``\hat T_h \hat T_h^\top``, ``W_O`` with
    ``\hat T_h^\top \hat T_h`` on the right). MLP and invariant features, with
    ``x_j = [(W_A)_{:,j}; (b_A)_j; (W_B)_{j,:}]`` per hidden neuron ``j``, ``y = [b_O; b_B]`` and the
    summaries ``u_m``, ``z_m`` of every block ``m`` (:func:`block_summary`):

    .. math::
        x'^l_j = P^l x^l_j + \sum_m R^{lm} u_m + \sum_m R'^{lm} z_m + c^l, \qquad
        y'^l = \sum_c a_c y^{l,c} + \sum_m Q^{lm} u_m + \sum_m Q'^{lm} z_m + d^l

    (each term with its own channel mix; ``P`` = blocks ``D+1 x D+1``, ``D+1 x D``, ``D x D+1``,
    ``D x D``). The linear part (without the ``\hat S``, ``\hat T`` factors and the ``z`` terms) spans every
    linear map that commutes with the group (measured in ``tests/nfn_ext/test_transformer_completeness.py``).

    Args:
        spec: shape of the weight space.
        in_channels, out_channels: feature channels.
        attention_to_mlp: add the ``z`` terms: a learned linear map of every block's ``mean_h S_h``,
            ``mean_h T_h`` (quadratic in the weights, invariant) to the MLP features and ``b_O``, ``b_B``
            (the paper's ``[WW]_{QK}``, ``[WW]_{VO}`` terms of ``W_A, b_A, W_B, b_B``, with full kernels).

    Shapes:
        input/output: a :class:`TransformerWeightSpace` with ``B`` models and ``C_in`` / ``C_out`` channels.
    """

    #: the terms of each output feature, each with a channel-mixing tensor ``(L, C_out, C_in)``
    _MIXES = {
        "q": ("own", "fixed", "self", "mean"),
        "k": ("own", "fixed", "self", "mean"),
        "v": ("own", "fixed", "self", "mean"),
        "o": ("own", "fixed", "self", "mean"),
        "a": ("own", "fixed", "from_b", "glob", "att"),
        "b": ("own", "fixed", "from_a", "glob", "att"),
        "bo": ("own", "glob", "att"),
        "bb": ("own", "glob", "att"),
    }
    #: terms that are not linear in the weights (left out of the completeness check)
    NONLINEAR_TERMS = ("self", "mean", "att")

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        in_channels: int,
        out_channels: int,
        attention_to_mlp: bool = True,
    ) -> None:
        super().__init__()
        self.spec, self.in_channels, self.out_channels = spec, in_channels, out_channels
        self.attention_to_mlp = attention_to_mlp
        L, D = spec.num_blocks, spec.d_model
        self.mix = nn.ParameterDict(
            {
                f"{feat}_{term}": nn.Parameter(torch.empty(L, out_channels, in_channels))
                for feat in self._MIXES
                for term in self._terms(feat)
            }
        )
        rows = {"a": D + 1, "b": D, "bo": D, "bb": D}
        fixed = {"q": (D + 1, D + 1), "k": (D + 1, D + 1), "v": (D + 1, D + 1), "o": (D, D)}
        fixed |= {"a": (D + 1, D + 1), "b": (D, D), "ab": (D + 1, D), "ba": (D + 1, D)}
        fixed |= {f"{n}_glob": (r, L, 4 * D + 1) for n, r in rows.items()}
        if attention_to_mlp:
            fixed |= {f"{n}_att": (r, L, (D + 1) * (2 * D + 1)) for n, r in rows.items()}
        self.fixed = nn.ParameterDict({k: nn.Parameter(torch.empty(L, *s)) for k, s in fixed.items()})
        self.bias = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(out_channels, L, r)) for n, r in rows.items()}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.mix.items():
            std = 1.0 / math.sqrt(self.in_channels * len(self._terms(name.split("_")[0])))
            nn.init.normal_(p, std=std)
        for p in self.fixed.values():
            nn.init.normal_(p, std=1.0 / math.sqrt(p[0, 0].numel()))
        for p in self.bias.values():
            nn.init.zeros_(p)

    def _terms(self, feat: str) -> tuple[str, ...]:
        return tuple(t for t in self._MIXES[feat] if self.attention_to_mlp or t != "att")

    def _mix(self, name: str, x: Tensor) -> Tensor:
        """Channel mix ``x`` ``(B, C_in, L, ...)`` -> ``(B, C_out, L, ...)``."""
        return torch.einsum("loc,bcl...->bol...", self.mix[name], x)

    def _summary_term(self, feat: str, term: str, u: Tensor) -> Tensor:
        """``sum_m F^{lm} (mix^l u_m)``: summaries ``u`` ``(B, C_in, L, G)`` -> ``(B, C_out, L, rows)``."""
        mixed = torch.einsum("loc,bcmg->bolmg", self.mix[f"{feat}_{term}"], u)
        return torch.einsum("lrmg,bolmg->bolr", self.fixed[f"{feat}_{term}"], mixed)

    def forward(self, ws: TransformerWeightSpace) -> TransformerWeightSpace:
        if ws.spec != self.spec or ws.channels != self.in_channels:
            raise ValueError(
                f"expected a weight space of shape {self.spec} with {self.in_channels} channels, got "
                f"{ws.spec} with {ws.channels}"
            )
        s, t = head_invariants(ws)
        s_hat, t_hat = _unit(s).mean(1), _unit(t).mean(1)  # (B, L, H, D+1, D+1), (B, L, H, D+1, D)
        left = {
            "q": s_hat.transpose(-1, -2),  # S^T [W_Q; b_Q] M^T: moves like W_Q
            "k": s_hat,  # S [W_K; b_K] M^{-1}: moves like W_K
            "v": t_hat @ t_hat.transpose(-1, -2),
        }
        out = {}
        for n in "qkv":
            x, g = _augment(getattr(ws, f"w{n}"), getattr(ws, f"b{n}")), left[n]
            out[n] = (
                self._mix(f"{n}_own", x)
                + torch.einsum("lij,bolhjk->bolhik", self.fixed[n], self._mix(f"{n}_fixed", x))
                + torch.einsum("blhij,bolhjk->bolhik", g, self._mix(f"{n}_self", x))
                + torch.einsum("blij,bolhjk->bolhik", g.mean(2), self._mix(f"{n}_mean", x))
            )
        r = t_hat.transpose(-1, -2) @ t_hat  # (B, L, H, D, D): W_O r moves like W_O
        wo = (
            self._mix("o_own", ws.wo)
            + torch.einsum("bolhvi,lij->bolhvj", self._mix("o_fixed", ws.wo), self.fixed["o"])
            + torch.einsum("bolhvi,blhij->bolhvj", self._mix("o_self", ws.wo), r)
            + torch.einsum("bolhvi,blij->bolhvj", self._mix("o_mean", ws.wo), r.mean(2))
        )
        a = _augment(ws.wa, ws.ba)  # (B, C, L, D+1, D_A)
        wa = (
            self._mix("a_own", a)
            + torch.einsum("lij,bolja->bolia", self.fixed["a"], self._mix("a_fixed", a))
            + torch.einsum("lij,bolaj->bolia", self.fixed["ab"], self._mix("a_from_b", ws.wb))
        )
        wb = (
            self._mix("b_own", ws.wb)
            + torch.einsum("bolai,lij->bolaj", self._mix("b_fixed", ws.wb), self.fixed["b"])
            + torch.einsum("bolia,lij->bolaj", self._mix("b_from_a", a), self.fixed["ba"])
        )
        inv = {"bo": self._mix("bo_own", ws.bo), "bb": self._mix("bb_own", ws.bb)}
        shared = {n: self.bias[n][None] for n in ("a", "b", "bo", "bb")}  # (1, C_out, L, rows)
        summaries = {"glob": block_summary(ws)}
        if self.attention_to_mlp:
            summaries["att"] = block_summary(ws, attention=True)
        for term, u in summaries.items():  # invariant: the same for every hidden neuron
            shared = {n: v + self._summary_term(n, term, u) for n, v in shared.items()}
        wa = wa + shared["a"][..., None]
        wb = wb + shared["b"][..., None, :]
        return TransformerWeightSpace(
            wq=out["q"][..., :-1, :], bq=out["q"][..., -1, :],
            wk=out["k"][..., :-1, :], bk=out["k"][..., -1, :],
            wv=out["v"][..., :-1, :], bv=out["v"][..., -1, :],
            wo=wo, bo=inv["bo"] + shared["bo"], wa=wa[..., :-1, :], ba=wa[..., -1, :],
            wb=wb, bb=inv["bb"] + shared["bb"],
            spec=self.spec, template=ws.template,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, spec={self.spec})"


class TransformerReLU(nn.Module):
    """ReLU where it keeps equivariance: on the MLP features and the invariant biases ``b_O``, ``b_B``."""

    def forward(self, ws: TransformerWeightSpace) -> TransformerWeightSpace:
        relu = torch.relu
        return TransformerWeightSpace(
            **(ws.tensors | {n: relu(getattr(ws, n)) for n in ("bo", "wa", "ba", "wb", "bb")}),
            spec=ws.spec,
            template=ws.template,
        )


def signed_log(x: Tensor) -> Tensor:
    """``sign(x) log(1 + |x|)``: compresses the spread of weight magnitudes across a zoo."""
    return torch.sign(x) * torch.log1p(x.abs())


class QuantileNorm(nn.Module):
    r"""Per-feature monotone map to normal scores, fitted on a training set (rank-Gauss, as scikit-learn's
    ``QuantileTransformer(output_distribution="normal")``). With ``q_{f,k}`` the training quantiles of feature
    ``f`` at the levels ``p_k = (k + 1/2) / K`` and ``z_k = \Phi^{-1}(p_k)``:

    .. math::
        y_f = z_k + \frac{x_f - q_{f,k}}{q_{f,k+1} - q_{f,k}} (z_{k+1} - z_k)
        \quad \text{for } q_{f,k} \le x_f \le q_{f,k+1},

    clipped to ``z_0``, ``z_{K-1}`` outside the training range. Each output is a function of its own
    feature, so invariant features stay invariant; unlike a LayerNorm over all features or a standardisation,
    it removes the features' heavy tails, to which gradient boosting is blind and a neural head is not.
    Unfitted, it is the identity on ``[z_0, z_{K-1}]``.

    Args:
        num_features: ``F``.
        num_knots: ``K``.

    Shapes:
        input ``(B, F)``; output ``(B, F)``.
    """

    def __init__(self, num_features: int, num_knots: int = 128) -> None:
        super().__init__()
        levels = (torch.arange(num_knots, dtype=torch.float64) + 0.5) / num_knots
        z = torch.special.ndtri(levels)
        self.register_buffer("levels", levels)
        self.register_buffer("scores", z)
        self.register_buffer("knots", z.expand(num_features, -1).clone())  # (F, K)

    @torch.no_grad()
    def fit(self, x: Tensor) -> QuantileNorm:
        """Set the knots to the per-feature quantiles of ``x`` ``(N, F)``; returns ``self``."""
        if x.ndim != 2 or x.shape[1] != self.knots.shape[0]:
            raise ValueError(f"expected features of shape (N, {self.knots.shape[0]}), got {tuple(x.shape)}")
        self.knots.copy_(torch.quantile(x.double(), self.levels, dim=0).T)
        return self

    def forward(self, x: Tensor) -> Tensor:
        knots, scores = self.knots.to(x.dtype), self.scores.to(x.dtype)
        xt = x.T.contiguous()  # (F, B)
        right = torch.searchsorted(knots, xt).clamp(1, knots.shape[1] - 1)
        lo, hi = knots.gather(1, right - 1), knots.gather(1, right)
        w = ((xt - lo) / (hi - lo).clamp_min(_EPS)).clamp(0, 1)
        return (scores[right - 1] + w * (scores[right] - scores[right - 1])).T

    def extra_repr(self) -> str:
        return f"{self.knots.shape[0]}, num_knots={self.knots.shape[1]}"


class PiecewiseLinearEncoding(nn.Module):
    r"""Piecewise-linear encoding of normal scores (Gorishniy et al., NeurIPS 2022, "On embeddings for
    numerical features in tabular deep learning"), read after :class:`QuantileNorm`: with edges
    ``e_0 < ... < e_T``, ``e_t = \Phi^{-1}(t / T)`` for ``0 < t < T`` and ``e_0 = -e_T`` = the
    :class:`QuantileNorm` clip ``z_{K-1}``,

    .. math:: \mathrm{enc}_t(z) = \mathrm{clip}\Big(\frac{z - e_{t-1}}{e_t - e_{t-1}}, 0, 1\Big),
              \quad t = 1, \dots, T,

    so bin ``t`` holds a ``1/T`` share of the training models of each feature and the head can act on one
    range of one feature alone (a threshold, as a tree does). A function of each feature alone: invariant
    features stay invariant.

    Args:
        bins: ``T``.
        limit: ``e_T``.

    Shapes:
        input ``(B, F)``; output ``(B, F T)``.
    """

    def __init__(self, bins: int, limit: float) -> None:
        super().__init__()
        if bins < 1 or limit <= 0:
            raise ValueError(f"expected bins >= 1 and limit > 0, got bins={bins}, limit={limit}")
        inner = torch.special.ndtri(torch.arange(1, bins, dtype=torch.float64) / bins)
        self.register_buffer(
            "edges", torch.cat([inner.new_tensor([-limit]), inner, inner.new_tensor([limit])])
        )

    def forward(self, z: Tensor) -> Tensor:
        edges = self.edges.to(z.dtype)
        return ((z[..., None] - edges[:-1]) / edges.diff()).clamp(0, 1).flatten(-2)

    def extra_repr(self) -> str:
        return f"bins={len(self.edges) - 1}"


class TransformerInvariantPool(nn.Module):
    r"""Invariant features ``(B, num_features)``, per block and channel: the head means of ``S_h`` and
    ``T_h``; the hidden-neuron means of ``[W_A; b_A]``, ``W_B`` and of their squares; ``b_O``, ``b_B``; and
    STATNN-style statistics (mean, variance, quantiles 0, 1/4, 1/2, 3/4, 1) of the entries of all ``S_h``, all
    ``T_h``, ``[W_A; b_A]``, ``W_B``, ``b_O`` and ``b_B`` (functions of invariant or permuted entries, hence
    invariant); then :func:`signed_log`. ``dense=True`` adds the head means of ``S_h``, ``T_h`` entry by entry
    (``(D+1)(2D+1)`` features; on the digits zoo they overfit). ``spectral=True`` adds singular values:
    the ``D_k`` largest of each ``S_h`` and the ``D_v`` largest of each ``T_h`` (their ranks; the rest are
    zero), mean and max over heads, and all of ``[W_A; b_A]`` and ``W_B`` (``2 (D_k + D_v) + min(D+1, D_A)
    + min(D_A, D)`` features; :class:`TransformerNFN` computes them on its input weights only)."""

    def __init__(
        self, spec: TransformerWeightSpaceSpec, channels: int, dense: bool = False, spectral: bool = False
    ) -> None:
        super().__init__()
        self.spec, self.channels, self.dense, self.spectral = spec, channels, dense, spectral
        D, A = spec.d_model, spec.d_mlp
        per_block = 2 * (D + 1) + 4 * D + 6 * len(_QUANTILES) + 12
        if dense:
            per_block += (D + 1) ** 2 + (D + 1) * D
        if spectral:
            per_block += 2 * (spec.d_qk + spec.d_v) + min(D + 1, A) + min(A, D)
        self.num_features = channels * spec.num_blocks * per_block
        self.register_buffer("quantiles", torch.tensor(_QUANTILES), persistent=False)

    def _stats(self, x: Tensor) -> Tensor:
        """``(B, C, L, n) -> (B, C, L, 2 + len(quantiles))``; zeros for ``n = 0``."""
        if x.shape[-1] == 0:
            return x.new_zeros(*x.shape[:-1], 2 + len(self.quantiles))
        q = torch.quantile(x, self.quantiles.to(x.dtype), dim=-1).movedim(0, -1)
        return torch.cat([x.mean(-1, keepdim=True), x.var(-1, keepdim=True, correction=0), q], dim=-1)

    def forward(self, ws: TransformerWeightSpace) -> Tensor:
        s, t = head_invariants(ws)
        a = _augment(ws.wa, ws.ba)
        mlp = [_mean(a, -1), _mean(a**2, -1), _mean(ws.wb, -2), _mean(ws.wb**2, -2)]
        stats = [self._stats(x.flatten(3)) for x in (s, t, a, ws.wb, ws.bo, ws.bb)]
        feats = [*mlp, ws.bo, ws.bb, *stats]
        if self.dense:
            feats += [s.mean(3).flatten(3), t.mean(3).flatten(3)]
        if self.spectral:
            heads = [
                torch.linalg.svdvals(x)[..., :rank] for x, rank in ((s, self.spec.d_qk), (t, self.spec.d_v))
            ]
            feats += [f(h, dim=3) for h in heads for f in (torch.mean, torch.amax)]
            feats += [torch.linalg.svdvals(x) for x in (a, ws.wb) if x.shape[-1] and x.shape[-2]]
        return signed_log(torch.cat(feats, dim=-1).flatten(1))


class TransformerNFN(nn.Module):
    r"""Invariant Transformer-NFN: :class:`TransformerLinear` layers with :class:`TransformerReLU`, then
    :class:`TransformerInvariantPool`, LayerNorm and an MLP to ``out_features`` (one logit per model).

    Args:
        spec: shape of the input weight spaces (``ws.spec``).
        hidden_channels: channels of the equivariant layers.
        head_hidden: width of the MLP head.
        out_features: outputs per model.
        in_channels: channels of the input weight space.
        dense_pool: see :class:`TransformerInvariantPool`.
        attention_to_mlp: see :class:`TransformerLinear`.
        io_features: size of an optional second input ``io`` ``(B, io_features)``: weights the group does
            not act on (the zoo's patch embedding and classifier,
            :func:`~nfn_ext.transformer_zoo.io_weights`), read through :func:`signed_log` and a linear
            map to ``io_hidden`` features beside the pool.
        io_hidden: see ``io_features``.
        feature_norm: normalisation of the pooled features before the head: ``"layer"`` (a LayerNorm over
            all features of a model) or ``"batch"`` (a BatchNorm per feature, over the training models).
        raw_features: also read the invariant pool of the *input* weights (and ``io``) through a
            :class:`QuantileNorm` fitted on the training models (:meth:`fit_feature_norm`), beside the
            learned features (``io`` then goes through it instead of the linear map).
        raw_spectral: the raw features include the singular values of the input's invariants
            (:class:`TransformerInvariantPool` ``spectral``).
        raw_bins: with ``T > 0``, the head reads the normalised raw features through a
            :class:`PiecewiseLinearEncoding` with ``T`` bins instead of as they are.

    Shapes:
        input: :class:`TransformerWeightSpace` with ``B`` models (and ``io`` ``(B, io_features)``); output
        ``(B, out_features)``.
    """

    def __init__(
        self,
        spec: TransformerWeightSpaceSpec,
        hidden_channels: Sequence[int] = (8,),
        head_hidden: int = 64,
        out_features: int = 1,
        in_channels: int = 1,
        dense_pool: bool = False,
        attention_to_mlp: bool = True,
        io_features: int = 0,
        io_hidden: int = 16,
        feature_norm: str = "layer",
        raw_features: bool = True,
        raw_spectral: bool = False,
        raw_bins: int = 0,
    ) -> None:
        super().__init__()
        if feature_norm not in ("layer", "batch"):
            raise ValueError(f"expected feature_norm 'layer' or 'batch', got {feature_norm!r}")
        if raw_bins < 0:
            raise ValueError(f"expected raw_bins >= 0 (0: no encoding), got {raw_bins}")
        if not raw_features and (raw_spectral or raw_bins):
            raise ValueError("raw_spectral and raw_bins act on the raw features: they need raw_features=True")
        self.spec, self.io_features = spec, io_features
        channels = [in_channels, *hidden_channels]
        layers: list[nn.Module] = []
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [TransformerLinear(spec, a, b, attention_to_mlp), TransformerReLU()]
        self.layers = nn.Sequential(*layers)
        self.pool = TransformerInvariantPool(spec, channels[-1], dense_pool)
        self.io = nn.Linear(io_features, io_hidden) if io_features and not raw_features else None
        n_in = self.pool.num_features + (io_hidden if self.io is not None else 0)
        self.norm = nn.LayerNorm(n_in) if feature_norm == "layer" else nn.BatchNorm1d(n_in)
        self.raw_pool = (
            TransformerInvariantPool(spec, in_channels, dense_pool, raw_spectral) if raw_features else None
        )
        self.raw_norm = QuantileNorm(self.raw_pool.num_features + io_features) if raw_features else None
        self.raw_encoding = (
            PiecewiseLinearEncoding(raw_bins, float(self.raw_norm.scores[-1])) if raw_bins else None
        )
        n_head = n_in + (self.raw_norm.knots.shape[0] * max(raw_bins, 1) if raw_features else 0)
        self.head = nn.Sequential(
            nn.Linear(n_head, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, head_hidden),
            nn.ReLU(),
            nn.Linear(head_hidden, out_features),
        )

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _check_io(self, ws: TransformerWeightSpace, io: Tensor | None) -> None:
        if self.io_features and (io is None or io.shape != (ws.batch_size, self.io_features)):
            got = None if io is None else tuple(io.shape)
            raise ValueError(f"expected io weights of shape {(ws.batch_size, self.io_features)}, got {got}")

    def raw(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> Tensor:
        """The features :class:`QuantileNorm` reads (``raw_features``): the invariant pool of ``ws`` and
        ``io``, ``(B, F)``."""
        if self.raw_pool is None:
            raise ValueError("this TransformerNFN was built without raw_features")
        self._check_io(ws, io)
        feats = self.raw_pool(ws)
        return torch.cat([feats, io.to(feats.dtype)], dim=-1) if self.io_features else feats

    @torch.no_grad()
    def fit_feature_norm(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> None:
        """Fit the :class:`QuantileNorm` of ``raw_features`` on the training models (no-op without it)."""
        if self.raw_norm is not None:
            self.raw_norm.fit(self.raw(ws, io))

    def forward(self, ws: TransformerWeightSpace, io: Tensor | None = None) -> Tensor:
        self._check_io(ws, io)
        feats = self.pool(self.layers(ws))
        if self.io is not None:
            feats = torch.cat([feats, self.io(signed_log(io.to(feats.dtype)))], dim=-1)
        feats = self.norm(feats)
        if self.raw_norm is not None:
            raw = self.raw_norm(self.raw(ws, io))
            feats = torch.cat([feats, raw if self.raw_encoding is None else self.raw_encoding(raw)], dim=-1)
        return self.head(feats)
