"""Kernel-density-estimation attention: functional core, vectorised over batch and heads.

Notation: queries ``q``, unit-norm keys ``k`` and values ``v`` of shape ``[B, H, N, D]``; Gaussian kernel
:math:`k(a, b) = \\exp(-\\lVert a - b \\rVert^2 / \\sigma)` with bandwidth :math:`\\sigma` (``sqrt(D)`` by
default). Because keys have unit norm, :math:`k(q_i, k_j) \\propto_i \\exp(2 q_i^\\top k_j / \\sigma)`,
so every estimator below is a softmax over logits ``2 q k^T / sigma``
plus an additive log-weight bias on the keys.

Weights (KIRWLS, SPKDE) are returned as ``[B, H, N]`` tensors on the simplex over the valid keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import maybe_add_mask, resolve_self_attn_mask
from torch import Tensor

LOSSES = ("huber", "hampel")
HAMPEL_QUANTILES = (0.5, 0.75, 0.95)
WEIGHT_FLOOR = 1e-6

# timm's mask helpers are torch.fx leaves in timm's namespace; make them leaves where this module calls them.
torch.fx.wrap("maybe_add_mask")
torch.fx.wrap("resolve_self_attn_mask")


def finfo(dtype: torch.dtype) -> tuple[float, float]:
    """``(tiny, eps)`` of a floating dtype, as ``torch.finfo`` gives them (TorchScript has no ``finfo``)."""
    if dtype == torch.float64:
        return 2.2250738585072014e-308, 2.220446049250313e-16
    if dtype == torch.float16:
        return 6.103515625e-05, 0.0009765625
    if dtype == torch.bfloat16:
        return 1.1754943508222875e-38, 0.0078125
    return 1.1754943508222875e-38, 1.1920928955078125e-07


def valid_keys(attn_mask: Tensor | None, batch: int, heads: int, tokens: int, device: torch.device) -> Tensor:
    """Keys that at least one query may attend to, ``[B, H, N]`` bool (SDPA broadcasting of the mask)."""
    if attn_mask is None:
        return torch.ones(batch, heads, tokens, dtype=torch.bool, device=device)
    allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
    return torch.broadcast_to(allowed.any(dim=-2), (batch, heads, tokens))


def gaussian_gram(x: Tensor, bandwidth: float) -> Tensor:
    """Gaussian Gram matrix :math:`G_{jl} = \\exp(-\\lVert x_j - x_l \\rVert^2 / \\sigma)`.

    Shape ``[..., N, N]``.
    """
    sq = x.pow(2).sum(-1)
    dist = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * x @ x.transpose(-2, -1)).clamp_min(0)
    return torch.exp(-dist / bandwidth)


def key_value_grams(k: Tensor, v: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    """Key Gram (unit-norm keys) and joint ``[k; v]`` Gram, both ``[B, H, N, N]`` in float32.

    The joint Gram of concatenated features is the elementwise product of the key and value Grams, so the
    pair costs two ``N x N x D`` matmuls (on features augmented so that the inner product is the scaled
    negative squared distance, which saves separate ``N x N`` passes for the norms), one add and two ``exp``:

    .. math::
        \\log G^{k}_{jl} = \\tfrac{2}{\\sigma}(k_j^\\top k_l - 1),\\qquad
        \\log G^{kv}_{jl} = \\log G^{k}_{jl} - \\tfrac{1}{\\sigma}\\lVert v_j - v_l \\rVert^2
    """
    n = k.shape[-2]
    shape = list(k.shape[:-2]) + [n, n]
    scale = math.sqrt(2 / bandwidth)
    k, v = k.float().reshape(-1, n, k.shape[-1]) * scale, v.float().reshape(-1, n, v.shape[-1]) * scale
    ones = k.new_ones(k.shape[0], n, 1)
    sq = v.pow(2).sum(-1, keepdim=True) / 2
    log_k = torch.cat([k, ones], -1) @ torch.cat([k, ones * (-2 / bandwidth)], -1).transpose(-2, -1)
    log_v = torch.cat([v, -sq, ones], -1) @ torch.cat([v, ones, -sq], -1).transpose(-2, -1)
    log_kv = log_v.add_(log_k)
    return log_k.exp_().reshape(shape), log_kv.exp_().reshape(shape)


def psi_over_r(r: Tensor, loss: str, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Robust-loss weight :math:`\\psi(r)/r`.

    Huber: :math:`\\min(1, a/r)`. Hampel: 1 for :math:`r<a`, :math:`a/r` on :math:`[a,b)`,
    :math:`a(c-r)/((c-b)r)` on :math:`[b,c)`, 0 beyond :math:`c`.
    """
    tiny, eps = finfo(r.dtype)
    safe_r = r.clamp_min(tiny)
    huber = torch.minimum(torch.ones_like(r), a / safe_r)
    if loss == "huber":
        return huber
    descent = a * (c - r) / ((c - b).clamp_min(eps) * safe_r)
    return torch.where(r < b, huber, torch.where(r < c, descent, torch.zeros_like(r)))


def _normalise(u: Tensor, valid: Tensor) -> Tensor:
    u = u * valid
    return u / u.sum(-1, keepdim=True).clamp_min(finfo(u.dtype)[0])


def _thresholds(
        r: Tensor, valid: Tensor, loss: str, threshold: float | tuple[float, float, float] | None,
        quantiles: tuple[float, float, float] = HAMPEL_QUANTILES,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hampel/Huber thresholds ``(a, b, c)``, each broadcastable to ``r``."""
    if threshold is None:
        masked = torch.where(valid, r, torch.full_like(r, float("nan")))
        if loss == "huber":
            a = masked.nanmedian(-1, keepdim=True).values
            return a, a, a
        qs = torch.tensor([quantiles[0], quantiles[1], quantiles[2]], dtype=r.dtype, device=r.device)
        a, b, c = torch.nanquantile(masked, qs, dim=-1, keepdim=True).unbind(0)
        return a, b, c
    if isinstance(threshold, (float, int)):
        a, b, c = float(threshold), 2.0 * threshold, 3.0 * threshold
    else:
        a, b, c = threshold
    return (torch.tensor(a, dtype=r.dtype, device=r.device), torch.tensor(b, dtype=r.dtype, device=r.device),
            torch.tensor(c, dtype=r.dtype, device=r.device))


def kirwls_weights(
        gram: Tensor,
        iterations: int,
        loss: str = "huber",
        threshold: float | tuple[float, float, float] | None = None,
        valid: Tensor | None = None,
) -> Tensor:
    """Robust-KDE weights by kernelised iteratively re-weighted least squares (Kim & Scott, 2012).

    Starting from :math:`w_j = 1/N`, each iteration computes the RKHS residuals

    .. math::
        r_j^2 = k(x_j, x_j) - 2 \\sum_l w_l G_{jl} + \\sum_{l,m} w_l w_m G_{lm}

    and sets :math:`w_j \\propto \\psi(r_j)/r_j`. ``threshold=None`` picks ``a`` (and Hampel's ``b, c``) as
    the median (and 75th, 95th percentiles) of the first residuals per batch and head; a float ``a`` gives
    Hampel ``(a, 2a, 3a)``.

    Args:
        gram: Kernel Gram matrix with unit diagonal, ``[..., N, N]``.
        iterations: Number of re-weighting steps; 0 returns the uniform (KDE) weights.
        loss: ``"huber"`` or ``"hampel"``.
        threshold: See above.
        valid: Keys taking part, ``[..., N]`` bool; others get weight 0.

    Returns:
        Weights on the simplex over the valid keys, ``[..., N]``.
    """
    if loss not in ("huber", "hampel"):
        raise ValueError("loss must be one of ('huber', 'hampel'), got " + loss)
    if valid is None:
        valid = torch.ones(gram.shape[:-1], dtype=torch.bool, device=gram.device)
    w = _normalise(torch.ones_like(gram[..., 0]), valid)
    a = b = c = w  # thresholds, set from the first residuals
    for step in range(iterations):
        gw = (w.unsqueeze(-2) @ gram).squeeze(-2)  # = G w, G symmetric (row form is the faster bmm)
        r = (1 - 2 * gw + (w * gw).sum(-1, keepdim=True)).clamp_min(0).sqrt()
        if step == 0:
            a, b, c = _thresholds(r, valid, loss, threshold)
        w = _normalise(psi_over_r(r, loss, a, b, c), valid)
    return w


def project_simplex(x: Tensor) -> Tensor:
    """Euclidean projection of each row of ``x`` onto the probability simplex (sort-based), ``[..., N]``."""
    u = x.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    idx = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    rho = (u - css / idx > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp_min(0)


def spkde_weights(gram: Tensor, contamination: float, steps: int, valid: Tensor | None = None) -> Tensor:
    """Scaled-and-projected KDE weights by accelerated projected gradient on the simplex.

    .. math::
        \\min_{a \\in \\Delta} \\tfrac12 a^\\top G a - \\tfrac{\\beta}{N} \\mathbf 1^\\top G a,
        \\qquad \\beta = 1/(1-\\varepsilon)

    FISTA with step :math:`1/L`, :math:`L = \\max_j \\sum_l G_{jl} \\ge \\lambda_{\\max}(G)`, started at the
    KDE.

    Args:
        gram: Kernel Gram matrix, ``[..., N, N]``.
        contamination: Assumed outlier fraction :math:`\\varepsilon \\in [0, 1)`.
        steps: Projected-gradient steps.
        valid: Keys taking part, ``[..., N]`` bool; others get weight 0.

    Returns:
        Weights on the simplex over the valid keys, ``[..., N]``.
    """
    if valid is None:
        valid = torch.ones(gram.shape[:-1], dtype=torch.bool, device=gram.device)
    gram = gram * (valid.unsqueeze(-1) & valid.unsqueeze(-2))
    uniform = _normalise(torch.ones_like(gram[..., 0]), valid)
    target = uniform / (1 - contamination)
    step = 1 / gram.sum(-1).amax(-1, keepdim=True).clamp_min(finfo(gram.dtype)[1])
    outside = torch.full_like(uniform, -1e9)
    a = y = uniform
    t = 1.0
    for _ in range(steps):
        grad = ((y - target).unsqueeze(-2) @ gram).squeeze(-2)
        a_next = project_simplex(torch.where(valid, y - step * grad, outside))
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = a_next + ((t - 1) / t_next) * (a_next - a)
        a, t = a_next, t_next
    return a


def kde_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bandwidth: float,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
) -> Tensor:
    """Nadaraya-Watson (KDE) attention :math:`h_i = \\sum_j k(q_i,k_j) v_j / \\sum_j k(q_i,k_j)`.

    With unit-norm keys this is fused softmax attention with scale ``2 / bandwidth``. Shapes ``[B, H, N, D]``.
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=2 / bandwidth)


def weighted_kde_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        weight_num: Tensor,
        weight_den: Tensor,
        bandwidth: float,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        weight_floor: float = WEIGHT_FLOOR,
) -> Tensor:
    """Re-weighted KDE attention, one fused SDPA call.

    .. math::
        h_i = \\frac{\\sum_j w^{kv}_j k(q_i, k_j) v_j}{\\sum_j w^{k}_j k(q_i, k_j)}
            = \\operatorname{SDPA}\\big(q, k, (w^{kv}_j / w^{k}_j)\\, v_j;\\ \\text{bias } \\log w^{k}_j\\big)

    Weights are clamped below at ``WEIGHT_FLOOR`` so that the log-bias and the ratio stay finite.

    Args:
        q, k, v: ``[B, H, N, D]`` (unit-norm keys).
        weight_num: Joint key-value weights :math:`w^{kv}`, ``[B, H, N]``.
        weight_den: Key weights :math:`w^{k}`, ``[B, H, N]``.
        bandwidth: Kernel bandwidth :math:`\\sigma`.
        attn_mask: Boolean or additive mask broadcastable to ``[B, H, N, N]``.
        dropout_p: Attention dropout probability.
        weight_floor: Lower clamp of the weights before their logarithm (``WEIGHT_FLOOR``).
    """
    log_den, ratio = weighted_kde_terms(weight_num, weight_den, weight_floor)
    bias = maybe_add_mask(log_den.unsqueeze(-2).to(q.dtype), resolve_self_attn_mask(q.shape[2], q, attn_mask))
    v = v * ratio.unsqueeze(-1).to(v.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=2 / bandwidth)


def weighted_kde_terms(
        weight_num: Tensor, weight_den: Tensor, weight_floor: float = WEIGHT_FLOOR,
) -> tuple[Tensor, Tensor]:
    """Key log-weights :math:`\\log w^{k}_j` (the logit bias) and value factors :math:`w^{kv}_j / w^{k}_j`,
    each ``[B, H, N]``, from weights clamped below at ``weight_floor``."""
    log_num = weight_num.clamp_min(weight_floor).log()
    log_den = weight_den.clamp_min(weight_floor).log()
    return log_den, (log_num - log_den).exp()


def weighted_kde_attention_map(
        q: Tensor,
        k: Tensor,
        weight_num: Tensor,
        weight_den: Tensor,
        bandwidth: float,
        attn_mask: Tensor | None = None,
        weight_floor: float = WEIGHT_FLOOR,
) -> Tensor:
    """The attention map ``A`` of :func:`weighted_kde_attention` (its output is ``A v``), ``[B, H, N, N]``.

    .. math::
        A_{ij} = \\operatorname{softmax}_j\\big(\\tfrac{2}{\\sigma} q_i^\\top k_j + \\log w^{k}_j\\big)\\,
        \\frac{w^{kv}_j}{w^{k}_j}

    The explicit (non-fused) path, as timm's ``Attention`` takes under ``set_fused_attn(False)``; rows sum to
    one only when :math:`w^{kv} = w^{k}`.
    """
    log_den, ratio = weighted_kde_terms(weight_num, weight_den, weight_floor)
    attn = (q * (2 / bandwidth)) @ k.transpose(-2, -1) + log_den.unsqueeze(-2).to(q.dtype)
    attn = maybe_add_mask(attn, resolve_self_attn_mask(q.shape[2], attn, attn_mask))
    return attn.softmax(dim=-1) * ratio.unsqueeze(-2).to(attn.dtype)


def block_assignment(tokens: int, num_blocks: int, device: torch.device, shuffle: bool) -> Tensor:
    """Block index of every key, ``[N]``: strided ``j mod K``, over a random permutation if ``shuffle``."""
    if not 1 <= num_blocks <= tokens:
        raise ValueError(
            f"num_blocks must be between 1 and the number of tokens ({tokens}), got {num_blocks}")
    order = torch.randperm(tokens, device=device) if shuffle else torch.arange(tokens, device=device)
    return order % num_blocks


def mom_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        blocks: Tensor,
        num_blocks: int,
        bandwidth: float,
        attn_mask: Tensor | None = None,
        dropout: torch.nn.Module | None = None,
) -> Tensor:
    """Median-of-means KDE attention :math:`h = \\operatorname{dropout}(A)\\, v` with ``A`` from
    :func:`mom_attention_map`. Shapes ``[B, H, N, D]``; ``dropout`` is applied to ``A``.
    """
    attn = mom_attention_map(q, k, blocks, num_blocks, bandwidth, attn_mask)
    if dropout is not None:
        attn = dropout(attn)
    return attn.to(v.dtype) @ v


def mom_attention_map(
        q: Tensor,
        k: Tensor,
        blocks: Tensor,
        num_blocks: int,
        bandwidth: float,
        attn_mask: Tensor | None = None,
) -> Tensor:
    """Median-of-means KDE attention map, ``[B, H, N, N]`` in float32.

    For each query, the key-density estimate of block :math:`b` is
    :math:`m_b(q_i) = \\frac{1}{|b|}\\sum_{j \\in b} k(q_i, k_j)`; the query attends (Nadaraya-Watson) only to
    the keys of its median block :math:`\\operatorname{median}_b m_b(q_i)` (lower median for even ``K``).
    Scores and probabilities are computed in float32 so that the median choice does not flip in bfloat16.

    Args:
        q, k: ``[B, H, N, D]`` (unit-norm keys).
        blocks: Block index of every key, ``[N]`` with values in ``[0, num_blocks)``.
        num_blocks: Number of blocks ``K``.
        bandwidth: Kernel bandwidth :math:`\\sigma`.
        attn_mask: Boolean or additive mask broadcastable to ``[B, H, N, N]``.
    """
    logits = (q.float() @ k.float().transpose(-2, -1)) * (2 / bandwidth)
    mask = resolve_self_attn_mask(q.shape[2], logits, attn_mask)
    if mask is not None:
        logits = logits + mask
    shift = logits.detach().amax(-1, keepdim=True).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    density = torch.exp(logits - shift)
    one_hot = F.one_hot(blocks, num_blocks).to(density.dtype)
    counts = (mask > float("-inf")).to(density.dtype) @ one_hot if mask is not None else one_hot.sum(0)
    means = (density.detach() @ one_hot) / counts
    median = means.float().nanmedian(-1).indices
    density = density * (blocks == median.unsqueeze(-1))
    return density / density.sum(-1, keepdim=True)
