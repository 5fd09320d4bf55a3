"""KDE, robust-KDE, SPKDE and median-of-means attention as drop-in replacements for timm's ``Attention``.

Every class subclasses :class:`timm.layers.Attention`: same constructor keywords, same parameters (``qkv``,
``proj``, ``q_norm``, ``k_norm``, ``norm``), same ``forward(x, attn_mask=None, is_causal=False)``, so a timm
checkpoint loads unchanged. Only the way queries meet keys changes (Han et al., NeurIPS 2023).
"""

import math
from typing import Final

import torch
from timm.layers import Attention, maybe_add_mask, register_notrace_function, resolve_self_attn_mask
from torch import Tensor, nn

from .functional import (
    LOSSES,
    SPKDE_TOL,
    block_assignment,
    kde_attention,
    key_value_grams,
    kirwls_key_value_weights,
    mom_attention_map,
    spkde_weights,
    unit_norm,
    valid_keys,
    weighted_kde_attention,
    weighted_kde_attention_map,
)

__all__ = ["KDEAttention", "RKDEAttention", "SPKDEAttention", "MoMAttention"]

# Data-dependent steps (iterative solvers, shape checks, median choices, branches on the mask) and the
# custom-autograd key normalisation are leaves for torch.fx, as timm does for its own mask helpers:
# torch.fx.wrap for plain symbolic tracing, timm's registry for timm's and torchvision's feature extractors.
for _name in ("key_value_grams", "kirwls_key_value_weights", "spkde_weights", "unit_norm"):
    torch.fx.wrap(_name)
    register_notrace_function(globals()[_name])
del _name


@torch.fx.wrap
@register_notrace_function
def weighted_valid_keys(attn_mask: Tensor | None, is_causal: bool, q: Tensor) -> Tensor:
    """Keys that take part in the robust weights, ``[B, H, N]`` bool; refuses ``is_causal``."""
    if is_causal:
        raise ValueError(
            "RKDE and SPKDE attention weight every key from all the others, which would leak future "
            "tokens under is_causal=True; use KDEAttention (attn_layer='kde') for causal attention")
    return valid_keys(attn_mask, q.shape[0], q.shape[1], q.shape[2], q.device)


@torch.fx.wrap
@register_notrace_function
def mom_attention_blocks(
        q: Tensor, k: Tensor, num_blocks: int, bandwidth: float, attn_mask: Tensor | None, is_causal: bool,
        shuffle: bool,
) -> Tensor:
    """Median-of-means attention map ``[B, H, N, N]`` over fresh (``shuffle``) or strided key blocks."""
    N = q.shape[2]
    if is_causal:
        attn_mask = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    blocks = block_assignment(N, num_blocks, q.device, shuffle)
    return mom_attention_map(q, k, blocks, num_blocks, bandwidth, attn_mask)


class KDEAttention(Attention):
    """Gaussian-kernel (KDE) attention with L2-normalised keys.

    .. math::
        h_i = \\frac{\\sum_j k(q_i, \\hat k_j) v_j}{\\sum_j k(q_i, \\hat k_j)},\\qquad
        k(a, b) = \\exp(-\\lVert a - b\\rVert^2/\\sigma),\\quad \\hat k_j = k_j / \\lVert k_j \\rVert

    Equal to softmax attention on normalised keys with scale :math:`2/\\sigma`; runs on the fused SDPA kernel.

    Args:
        dim ... norm_layer: As :class:`timm.layers.Attention` (``gated`` only where timm supports it).
        bandwidth: Kernel bandwidth :math:`\\sigma`; ``None`` uses :math:`\\sqrt{d_{head}}`.

    Shapes:
        - **input:** ``x [B, N, dim]``, ``attn_mask`` bool (True = attend) or additive, broadcastable to
          ``[B, num_heads, N, N]``
        - **output:** ``[B, N, dim_out]``
    """

    bandwidth: Final[float]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: int | None = None,
            dim_out: int | None = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            norm_layer: type[nn.Module] | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            bandwidth: float | None = None,
    ) -> None:
        extra = {"gated": True} if gated else {}
        super().__init__(
            dim, num_heads=num_heads, attn_head_dim=attn_head_dim, dim_out=dim_out, qkv_bias=qkv_bias,
            qk_norm=qk_norm, scale_norm=scale_norm, proj_bias=proj_bias, attn_drop=attn_drop,
            proj_drop=proj_drop, norm_layer=norm_layer, device=device, dtype=dtype, **extra)
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be a positive float or None (sqrt(head_dim)), got {bandwidth}")
        self.bandwidth = float(bandwidth) if bandwidth is not None else math.sqrt(self.head_dim)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, bandwidth={self.bandwidth:.3g}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        """Mix values ``[B, H, N, D]`` given queries and unit-norm keys; returns ``[B, H, N, D]``.

        Fused SDPA by default; with ``fused_attn`` off (timm's ``set_fused_attn(False)``) the attention map is
        computed explicitly and passes through ``attn_drop``, where timm's ``AttentionExtract`` sees it.
        """
        if self.fused_attn:
            return kde_attention(q, k, v, self.bandwidth, attn_mask, self._dropout_p(), is_causal)
        attn = (q * (2 / self.bandwidth)) @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(q.shape[2], attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), unit_norm(self.k_norm(k))
        x = self.attend(q, k, v, attn_mask, is_causal)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class _WeightedKDEAttention(KDEAttention):
    """KDE attention with per-key weights: joint ``[k; v]`` weights above, key weights below the fraction."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        valid = weighted_valid_keys(attn_mask, is_causal, q)
        weight_num, weight_den = self.key_weights(k, v, valid)
        if self.fused_attn:
            return weighted_kde_attention(
                q, k, v, weight_num, weight_den, self.bandwidth, attn_mask, self._dropout_p())
        attn = weighted_kde_attention_map(q, k, weight_num, weight_den, self.bandwidth, attn_mask)
        return self.attn_drop(attn) @ v

    def key_weights(self, k: Tensor, v: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Numerator (joint key-value) and denominator (key) weights, each ``[B, H, N]``."""
        raise NotImplementedError


class RKDEAttention(_WeightedKDEAttention):
    """Robust-KDE attention: KIRWLS weights for the numerator (joint ``[k; v]``) and denominator (keys).

    .. math::
        h_i = \\frac{\\sum_j w^{kv}_j k(q_i, \\hat k_j) v_j}{\\sum_j w^{k}_j k(q_i, \\hat k_j)}

    where :math:`w^{kv}, w^{k}` come from :func:`~timm_robust_attn.functional.kirwls_weights` on the Gram of
    :math:`[\\hat k; v]` (the elementwise product of the key and value Grams) and of :math:`\\hat k`.
    With ``iterations=0`` this is exactly :class:`KDEAttention`.

    Args:
        dim ... norm_layer: As :class:`timm.layers.Attention`.
        bandwidth: Kernel bandwidth; ``None`` uses :math:`\\sqrt{d_{head}}`.
        loss: ``"huber"`` or ``"hampel"``.
        threshold: Huber ``a`` / Hampel ``a`` (then ``b, c = 2a, 3a``) or a Hampel triple ``(a, b, c)``;
            ``None`` takes the median (Hampel: 50/75/95th percentiles) of the first residuals.
        iterations: KIRWLS re-weighting steps (0 gives KDE attention).
        weight_grad: Back-propagate through the weights; by default they are constants (IRLS practice),
            which removes their backward cost.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: int | None = None,
            dim_out: int | None = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            norm_layer: type[nn.Module] | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            bandwidth: float | None = None,
            loss: str = "huber",
            threshold: float | tuple[float, float, float] | None = None,
            iterations: int = 1,
            weight_grad: bool = False,
    ) -> None:
        super().__init__(
            dim, num_heads=num_heads, attn_head_dim=attn_head_dim, dim_out=dim_out, qkv_bias=qkv_bias,
            qk_norm=qk_norm, scale_norm=scale_norm, proj_bias=proj_bias, gated=gated, attn_drop=attn_drop,
            proj_drop=proj_drop, norm_layer=norm_layer, device=device, dtype=dtype, bandwidth=bandwidth)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss
        self.threshold = _check_threshold(threshold)
        if not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
        self.iterations = iterations
        self.weight_grad = weight_grad

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, loss={self.loss}, threshold={self.threshold}, "
                f"iterations={self.iterations}, weight_grad={self.weight_grad}")

    def key_weights(self, k: Tensor, v: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        if self.iterations == 0:
            uniform = valid / valid.sum(-1, keepdim=True).clamp_min(1)
            return uniform, uniform
        if not self.weight_grad:  # constants in the backward pass: no graph is recorded for them
            k, v = k.detach(), v.detach()
        return kirwls_key_value_weights(
            k, v, self.bandwidth, self.iterations, self.loss, self.threshold, valid)


class SPKDEAttention(_WeightedKDEAttention):
    """Scaled-and-projected KDE attention: simplex-constrained weights, the solution of a batched QP.

    Same estimator as :class:`RKDEAttention`, with :math:`w^{kv}, w^{k}` from
    :func:`~timm_robust_attn.functional.spkde_weights` (restarted FISTA to a gradient-mapping tolerance,
    then an exact active-set solve checked against the KKT conditions).

    Args:
        dim ... norm_layer: As :class:`timm.layers.Attention`.
        bandwidth: Kernel bandwidth; ``None`` uses :math:`\\sqrt{d_{head}}`.
        contamination: Assumed outlier fraction :math:`\\varepsilon \\in [0, 1)`;
            :math:`\\beta = 1/(1-\\varepsilon)`.
        steps: Most projected-gradient (FISTA) steps before the exact active-set phase.
        tol: FISTA stops once the L1 norm of every row's gradient mapping is at most ``tol``.
        weight_grad: Back-propagate through the weights (through the exact KKT solve, i.e. the implicit
            derivative of the optimum on its support); by default they are constants.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: int | None = None,
            dim_out: int | None = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            norm_layer: type[nn.Module] | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            bandwidth: float | None = None,
            contamination: float = 0.1,
            steps: int = 1000,
            tol: float = SPKDE_TOL,
            weight_grad: bool = False,
    ) -> None:
        super().__init__(
            dim, num_heads=num_heads, attn_head_dim=attn_head_dim, dim_out=dim_out, qkv_bias=qkv_bias,
            qk_norm=qk_norm, scale_norm=scale_norm, proj_bias=proj_bias, gated=gated, attn_drop=attn_drop,
            proj_drop=proj_drop, norm_layer=norm_layer, device=device, dtype=dtype, bandwidth=bandwidth)
        if not 0 <= contamination < 1:
            raise ValueError(f"contamination must be in [0, 1), got {contamination}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if not tol > 0:
            raise ValueError(f"tol must be a positive float, got {tol!r}")
        self.contamination = float(contamination)
        self.steps = steps
        self.tol = float(tol)
        self.weight_grad = weight_grad

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, contamination={self.contamination}, steps={self.steps}, "
                f"tol={self.tol:g}, weight_grad={self.weight_grad}")

    def key_weights(self, k: Tensor, v: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        if not self.weight_grad:  # constants in the backward pass: no graph is recorded for them
            k, v = k.detach(), v.detach()
        gram_k, gram_kv = key_value_grams(k, v, self.bandwidth)
        weight_num = spkde_weights(gram_kv, self.contamination, self.steps, valid, self.tol)
        weight_den = spkde_weights(gram_k, self.contamination, self.steps, valid, self.tol)
        return weight_num, weight_den


class MoMAttention(KDEAttention):
    """Median-of-means KDE attention: each query attends within the key block of median density.

    Keys are split into ``num_blocks`` strided blocks (``j mod K``; over a fresh random permutation of the
    tokens at every training step); see :func:`~timm_robust_attn.functional.mom_attention`.

    Args:
        dim ... norm_layer: As :class:`timm.layers.Attention`.
        bandwidth: Kernel bandwidth; ``None`` uses :math:`\\sqrt{d_{head}}`.
        num_blocks: Number of blocks ``K`` (at most the number of tokens).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: int | None = None,
            dim_out: int | None = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            norm_layer: type[nn.Module] | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            *,
            bandwidth: float | None = None,
            num_blocks: int = 5,
    ) -> None:
        super().__init__(
            dim, num_heads=num_heads, attn_head_dim=attn_head_dim, dim_out=dim_out, qkv_bias=qkv_bias,
            qk_norm=qk_norm, scale_norm=scale_norm, proj_bias=proj_bias, gated=gated, attn_drop=attn_drop,
            proj_drop=proj_drop, norm_layer=norm_layer, device=device, dtype=dtype, bandwidth=bandwidth)
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(
                f"num_blocks must be a positive int (at most the number of tokens), got {num_blocks!r}")
        self.num_blocks = num_blocks

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_blocks={self.num_blocks}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        """Always explicit: the median-of-means map passes through ``attn_drop``."""
        attn = mom_attention_blocks(
            q, k, self.num_blocks, self.bandwidth, attn_mask, is_causal, self.training)
        return self.attn_drop(attn).to(v.dtype) @ v


def _check_threshold(threshold: float | tuple[float, float, float] | None):
    """Validate a Huber/Hampel threshold: ``None``, a positive float, or an increasing positive triple."""
    if threshold is None:
        return None
    if isinstance(threshold, int | float):
        if not threshold > 0:
            raise ValueError(
                f"threshold must be a positive float, a triple a <= b < c, or None; got {threshold}")
        return float(threshold)
    if len(threshold) != 3:
        raise ValueError(f"a Hampel threshold triple must be (a, b, c) with 0 < a <= b < c, got {threshold}")
    a, b, c = (float(t) for t in threshold)
    if not 0 < a <= b < c:
        raise ValueError(f"a Hampel threshold triple must satisfy 0 < a <= b < c, got {threshold}")
    return (a, b, c)
