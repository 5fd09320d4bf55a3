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
MASKED_AT = -1e4
"""Additive mask values at or below this count as masked (``finfo.min`` masks included): ``exp`` of such a
logit offset underflows to 0 in every float dtype, so SDPA gives those keys zero weight too."""
SPREAD_TOL = 1e-5
"""Resolution of KIRWLS's squared residuals (``0 <= r^2 <= 2`` with a unit Gram diagonal), well above their
float32 rounding: squared residuals below it count as ``SPREAD_TOL``, and a batch-head row whose squared
residuals span at most this much gets uniform (KDE) weights, as a decision between its keys would be noise."""
THRESHOLD_GAP = 1e-4
"""Smallest gap between data-driven Hampel thresholds, ``b >= a + gap``, ``c >= b + gap`` (residual units):
when most keys are equally isolated (Gram close to the identity), the percentiles coincide up to rounding, and
the descending branch's slope ``a / ((c - b) r)`` would turn that rounding into weights between 0 and 1."""

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


def unit_norm(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||, eps)`` along the last axis, as ``F.normalize``, with a fused backward
    :math:`\\partial x = r\\,(g - y\\,(y^\\top g))`, ``r = 1 / max(||x||, eps)`` (the projection only where
    ``||x|| > eps``): three passes over ``x`` where autograd of ``F.normalize`` takes about six. TorchScript
    and double backward (``create_graph=True``) differentiate the same formula through autograd."""
    if torch.jit.is_scripting():
        return x * torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps).reciprocal()
    return _UnitNorm.apply(x, eps)


class _UnitNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inverse = norm.clamp_min(eps).reciprocal()
        y = torch.mul(x, inverse, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))  # contiguous
        ctx.eps = eps
        ctx.save_for_backward(x, y, inverse, norm > eps)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, y, inverse, projected = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula instead
            plain = x * torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(ctx.eps).reciprocal()
            return torch.autograd.grad(plain, x, grad, create_graph=True)[0], None
        dot = torch.linalg.vecdot(y, grad).unsqueeze(-1) * inverse * projected
        return torch.addcmul(grad * inverse, y, dot, value=-1), None


def allowed_pairs(attn_mask: Tensor, masked_at: float = MASKED_AT) -> Tensor:
    """Query-key pairs a mask allows, bool of the mask's shape: True entries of a boolean mask, additive
    entries above ``masked_at`` (``MASKED_AT``: so ``-inf`` and ``finfo.min`` padding are both masked)."""
    return attn_mask if attn_mask.dtype == torch.bool else attn_mask > masked_at


def valid_keys(attn_mask: Tensor | None, batch: int, heads: int, tokens: int, device: torch.device) -> Tensor:
    """Keys that at least one query may attend to, ``[B, H, N]`` bool (SDPA broadcasting of the mask)."""
    if attn_mask is None:
        return torch.ones(batch, heads, tokens, dtype=torch.bool, device=device)
    return torch.broadcast_to(allowed_pairs(attn_mask).any(dim=-2), (batch, heads, tokens))


def gaussian_gram(x: Tensor, bandwidth: float) -> Tensor:
    """Gaussian Gram matrix :math:`G_{jl} = \\exp(-\\lVert x_j - x_l \\rVert^2 / \\sigma)`.

    Shape ``[..., N, N]``.
    """
    sq = x.pow(2).sum(-1)
    dist = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * x @ x.transpose(-2, -1)).clamp_min(0)
    return torch.exp(-dist / bandwidth)


GRAM_CHUNK_BYTES = 1 << 20
"""Working set of one-iteration KIRWLS on the CPU: batch-head rows are processed in chunks whose two ``N x N``
Gram blocks take at most this many bytes (about an L2 cache), so each block is exponentiated and summed while
still in cache, and no ``B*H x N x N`` buffer is allocated per call."""


def key_value_grams(k: Tensor, v: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    r"""Key Gram (unit-norm keys) and joint ``[k; v]`` Gram, both ``[B, H, N, N]``.

    Computed in float32 (float64 for float64 inputs). Each Gram is the ``exp`` of a scaled negative squared
    distance; the joint Gram of concatenated features is the elementwise product of the key and value Grams,
    so the pair costs two ``N x N x (D + 2)`` matmuls on features augmented so that the inner product is the
    scaled negative squared distance (the second accumulating onto the first) and two ``exp``:

    .. math::
        \log G^{k}_{jl} = -\tfrac{1}{\sigma}\lVert k_j - k_l \rVert^2,\qquad
        \log G^{kv}_{jl} = \log G^{k}_{jl} - \tfrac{1}{\sigma}\lVert v_j - v_l \rVert^2

    Keys and values are centred per row first (distances do not change), which keeps the rounding of
    :math:`\lVert x_j\rVert^2 + \lVert x_l\rVert^2 - 2x_j^\top x_l` at the scale of the distances;
    the diagonal is exactly 1, so identical tokens give a Gram of exact ones.
    """
    shape = list(k.shape[:-1]) + [k.shape[-2]]
    ak, bk = _augmented_features(k, bandwidth)
    av, bv = _augmented_features(v, bandwidth)
    log_k = torch.bmm(ak, bk.transpose(-2, -1))
    log_k.diagonal(dim1=-2, dim2=-1).zero_()
    log_kv = torch.baddbmm(log_k, av, bv.transpose(-2, -1))
    log_kv.diagonal(dim1=-2, dim2=-1).zero_()
    if log_k.requires_grad:
        return log_k.exp().reshape(shape), log_kv.exp().reshape(shape)
    return log_k.exp_().reshape(shape), log_kv.exp_().reshape(shape)


def _augmented_features(x: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    """Row-centred features ``a, b`` of shape ``[B * H, N, D + 2]`` (float32, float64 for float64 input)
    with :math:`a_j^\\top b_l = -\\lVert x_j - x_l \\rVert^2 / \\sigma`. Without autograd they are written
    in place (two allocations instead of four)."""
    d = x.shape[-1]
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    scale = math.sqrt(2 / bandwidth)
    if not x.requires_grad:
        a = x.new_empty(list(x.shape[:-1]) + [d + 2])
        b = torch.empty_like(a)
        torch.sub(x, x.mean(-2, keepdim=True), out=a[..., :d]).mul_(scale)
        half_sq = torch.linalg.vector_norm(a[..., :d], dim=-1).pow_(2).mul_(-0.5)
        b[..., :d] = a[..., :d]
        a[..., d] = half_sq
        a[..., d + 1] = 1.0
        b[..., d] = 1.0
        b[..., d + 1] = half_sq
        return a.flatten(0, -3), b.flatten(0, -3)
    x = (x - x.mean(-2, keepdim=True)).mul_(scale)  # any layout: cat makes it contiguous
    half_sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).pow(2).mul(-0.5)
    ones = torch.ones_like(half_sq)
    return torch.cat([x, half_sq, ones], -1).flatten(0, -3), torch.cat([x, ones, half_sq], -1).flatten(0, -3)


def kirwls_key_value_weights(
        k: Tensor,
        v: Tensor,
        bandwidth: float,
        iterations: int,
        loss: str,
        threshold: float | tuple[float, float, float] | None,
        valid: Tensor,
        chunk_bytes: int = GRAM_CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    r"""KIRWLS weights of the joint ``[k; v]`` Gram and of the key Gram, ``(w^kv, w^k)``, each ``[B, H, N]``:
    :func:`kirwls_weights` on the two Grams of :func:`key_value_grams`, solved as one batch.

    Without gradients the key Gram is one matmul of the keys themselves onto their squared norms,
    :math:`\log G^k_{jl} = \tfrac{2}{\sigma}(k_j^\top k_l - \tfrac12\lVert k_j\rVert^2
    - \tfrac12\lVert k_l\rVert^2)` (keys are not centred: RKDE's have unit norm), and both Grams go into
    one buffer.
    With one iteration only :math:`G w` for the uniform ``w`` is needed: on the CPU it is computed in chunks
    of batch-head rows of ``chunk_bytes`` (``GRAM_CHUNK_BYTES``), each Gram block exponentiated and
    multiplied while still in cache, and the Grams are never stored whole. Shapes: ``k, v``
    ``[B, H, N, D]``, ``valid`` ``[B, H, N]``.
    """
    batch, heads, n = k.shape[0], k.shape[1], k.shape[2]
    rows = batch * heads
    if n == 0:  # no tokens: empty weights
        dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
        return k.new_zeros(batch, heads, 0, dtype=dtype), k.new_zeros(batch, heads, 0, dtype=dtype)
    if k.requires_grad or v.requires_grad:
        gram_k, gram_kv = key_value_grams(k, v, bandwidth)
        return (kirwls_weights(gram_kv, iterations, loss, threshold, valid),
                kirwls_weights(gram_k, iterations, loss, threshold, valid))
    scale = 2 / bandwidth
    av, bv = _augmented_features(v, bandwidth)
    keys = k.to(av.dtype).reshape(rows, n, k.shape[-1])
    valid2 = valid.reshape(1, rows, n).expand(2, rows, n)
    half_sq = torch.linalg.vector_norm(keys, dim=-1).pow(2).mul(-scale / 2)  # [B * H, N]
    if iterations != 1:
        grams = _gram_block(keys, half_sq, av, bv, scale, av.new_empty(2, rows, n, n))
        weights = kirwls_weights(grams, iterations, loss, threshold, valid2)
    else:
        uniform = _normalise(valid2.to(av.dtype), valid2)
        chunk = rows
        if k.device.type == "cpu":
            chunk = max(1, chunk_bytes // max(1, 2 * n * n * av.element_size()))
        block = av.new_empty(2 * min(chunk, rows) * n * n)
        parts: list[Tensor] = []
        keys_c, sq_c, av_c, bv_c = keys.split(chunk), half_sq.split(chunk), av.split(chunk), bv.split(chunk)
        w_c = uniform.split(chunk, 1)
        for i in range(len(keys_c)):
            size = keys_c[i].shape[0]
            out = block[: 2 * size * n * n].view(2, size, n, n)  # a contiguous prefix also for the last chunk
            grams = _gram_block(keys_c[i], sq_c[i], av_c[i], bv_c[i], scale, out).view(2 * size, n, n)
            parts.append(torch.bmm(w_c[i].reshape(2 * size, 1, n), grams).view(2, size, n))
        weights = _kirwls_step(torch.cat(parts, 1), uniform, uniform, valid2, loss, threshold,
                               uniform, uniform, uniform, True)[0]
    return weights[0].reshape(batch, heads, n), weights[1].reshape(batch, heads, n)


def _gram_block(
        keys: Tensor, half_sq: Tensor, av: Tensor, bv: Tensor, scale: float, out: Tensor) -> Tensor:
    r"""Joint and key Grams of a chunk of batch-head rows written into ``out`` (``[2, rows, N, N]``, joint
    first), no autograd: :math:`\log G^k_{jl} = s\, k_j^\top k_l + h_j + h_l` with ``s = 2 / sigma`` and
    ``half_sq`` :math:`h = -\tfrac{s}{2}\lVert k\rVert^2` (``[rows, N]``), and
    :math:`\log G^{kv} = \log G^k + a_v b_v^\top` (:func:`_augmented_features`)."""
    torch.add(half_sq.unsqueeze(-1), half_sq.unsqueeze(-2), out=out[1])
    out[1].baddbmm_(keys, keys.transpose(-2, -1), alpha=scale)
    torch.baddbmm(out[1], av, bv.transpose(-2, -1), out=out[0])
    out.diagonal(dim1=-2, dim2=-1).zero_()
    return out.exp_()


def psi_over_r(r: Tensor, loss: str, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    r"""Robust-loss weight :math:`\psi(r)/r`, 1 wherever :math:`r \le a` (so also at :math:`r = a = 0`).

    Huber: 1 for :math:`r \le a`, :math:`a/r` beyond. Hampel: 1 for :math:`r \le a`, :math:`a/r` on
    :math:`(a, b]`, :math:`a(c-r)/((c-b)r)` on :math:`(b, c]`, 0 beyond :math:`c`.
    """
    tiny = finfo(r.dtype)[0]
    safe_r = r.clamp_min(tiny)
    huber = torch.where(r <= a, torch.ones_like(r), a / safe_r)
    if loss == "huber":
        return huber
    descent = a * (c - r) / ((c - b).clamp_min(tiny) * safe_r)
    return torch.where(r <= b, huber, torch.where(r <= c, descent, torch.zeros_like(r)))


def _normalise(u: Tensor, valid: Tensor) -> Tensor:
    u = u * valid
    return u / u.sum(-1, keepdim=True).clamp_min(finfo(u.dtype)[0])


def _thresholds(
        r: Tensor, valid: Tensor, loss: str, threshold: float | tuple[float, float, float] | None,
        quantiles: tuple[float, float, float] = HAMPEL_QUANTILES, gap: float = THRESHOLD_GAP,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hampel/Huber thresholds ``(a, b, c)``, each broadcastable to ``r``; data-driven Hampel thresholds are
    at least ``gap`` (``THRESHOLD_GAP``) apart."""
    if threshold is None:
        masked = torch.where(valid, r, torch.full_like(r, float("nan")))
        if loss == "huber":
            a = masked.nanmedian(-1, keepdim=True).values
            return a, a, a
        qs = torch.tensor([quantiles[0], quantiles[1], quantiles[2]], dtype=r.dtype, device=r.device)
        a, b, c = torch.nanquantile(masked, qs, dim=-1, keepdim=True).unbind(0)
        b = torch.maximum(b, a + gap)
        return a, b, torch.maximum(c, b + gap)
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
    r"""Robust-KDE weights by kernelised iteratively re-weighted least squares (Kim & Scott, 2012).

    Starting from :math:`w_j = 1/N`, each iteration computes the RKHS residuals (the Gram diagonal is taken as
    exactly 1)

    .. math::
        r_j^2 = \lVert \phi_j - \textstyle\sum_l w_l \phi_l \rVert^2 = 1 - 2 (G w)_j + w^\top G w

    and sets :math:`w_j \propto \psi(r_j)/r_j`. ``threshold=None`` picks ``a`` (and Hampel's ``b, c``) as
    the median (and 75th, 95th percentiles, at least ``THRESHOLD_GAP`` apart) of the first residuals per
    batch and head; a float ``a`` gives Hampel ``(a, 2a, 3a)``. Squared residuals are floored at
    ``SPREAD_TOL``; rows whose squared residuals span at most ``SPREAD_TOL`` (identical tokens, or a Gram
    close to the identity, where the residuals differ only by rounding), and rows where every key is past
    Hampel's ``c``, get uniform weights.

    Args:
        gram: Kernel Gram matrix (symmetric), ``[..., N, N]``.
        iterations: Number of re-weighting steps; 0 returns the uniform (KDE) weights.
        loss: ``"huber"`` or ``"hampel"``.
        threshold: See above.
        valid: Keys taking part, ``[..., N]`` bool; others get weight 0.

    Returns:
        Weights on the simplex over the valid keys, ``[..., N]``.
    """
    if valid is None:
        valid = torch.ones(gram.shape[:-1], dtype=torch.bool, device=gram.device)
    uniform = _normalise(gram.new_ones(gram.shape[:-1]), valid)
    w = uniform
    a = b = c = w  # thresholds, set from the first residuals
    for step in range(iterations if gram.shape[-1] > 0 else 0):  # no keys: nothing to re-weight
        gram_w = (w.unsqueeze(-2) @ gram).squeeze(-2)  # = G w, G symmetric (row form is the faster bmm)
        w, a, b, c = _kirwls_step(gram_w, w, uniform, valid, loss, threshold, a, b, c, step == 0)
    return w


def _kirwls_step(
        gram_w: Tensor, w: Tensor, uniform: Tensor, valid: Tensor, loss: str,
        threshold: float | tuple[float, float, float] | None, a: Tensor, b: Tensor, c: Tensor, first: bool,
        spread_tol: float = SPREAD_TOL,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One KIRWLS re-weighting from :math:`G w`, ``[..., N]``: the new weights and the thresholds ``(a, b,
    c)`` (set from these residuals when ``first``). ``spread_tol`` is ``SPREAD_TOL`` (an argument so that
    TorchScript sees no module constant)."""
    if loss not in ("huber", "hampel"):
        raise ValueError("loss must be one of ('huber', 'hampel'), got " + loss)
    r2 = (1 - 2 * gram_w + (w * gram_w).sum(-1, keepdim=True)).clamp_min(spread_tol)
    spread = (r2.masked_fill(~valid, 0).amax(-1, keepdim=True)
              - r2.masked_fill(~valid, float("inf")).amin(-1, keepdim=True))
    r = r2.sqrt()
    if first:
        a, b, c = _thresholds(r, valid, loss, threshold)
    u = psi_over_r(r, loss, a, b, c) * valid
    degenerate = (spread <= spread_tol) | (u.sum(-1, keepdim=True) == 0)
    return torch.where(degenerate, uniform, _normalise(u, valid)), a, b, c


def project_simplex(x: Tensor) -> Tensor:
    """Euclidean projection of each row of ``x`` onto the probability simplex (sort-based), ``[..., N]``."""
    u = x.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    idx = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    rho = (u - css / idx > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp_min(0)


SPKDE_TOL = 1e-3
"""Default stopping tolerance of SPKDE's fallback projected-gradient phase: the L1 norm of the gradient
mapping ``L (a - P(a - grad / L))``."""


def _spkde_objective_grad(a: Tensor, gram: Tensor, target: Tensor) -> Tensor:
    return ((a - target).unsqueeze(-2) @ gram).squeeze(-2)


def _spkde_active_set(
        gram: Tensor, support: Tensor, target: Tensor, valid: Tensor, rounds: int) -> tuple[Tensor, Tensor]:
    r"""Exact simplex-QP solution by a primal active-set method, in float64.

    Each round solves the KKT system :math:`G_{SS} a_S - \lambda \mathbf 1 = (G t)_S,\ \mathbf 1^\top a_S = 1`
    on the support :math:`S`, drops keys with :math:`a_j < 0` and adds valid keys off the support whose
    gradient is below :math:`\lambda` (a row that passed keeps its support, so re-solving it is a no-op).
    Returns the solution and, per row, whether it passed the KKT check (primal feasible, dual feasible to
    ``1e-9`` relative, finite, non-singular system).
    """
    n = gram.shape[-1]
    dtype = gram.dtype
    gram, target = gram.double(), target.double()
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram_target = (target.unsqueeze(-2) @ gram).squeeze(-2)
    zero = gram.new_zeros(list(gram.shape[:-2]) + [1, 1])
    solution, ok = target, torch.zeros_like(support[..., 0])
    for _ in range(rounds):
        on = support.to(gram.dtype)
        block = torch.where(support.unsqueeze(-1) & support.unsqueeze(-2), gram, eye)
        kkt = torch.cat([torch.cat([block, -on.unsqueeze(-1)], -1),
                         torch.cat([on.unsqueeze(-2), zero], -1)], -2)
        rhs = torch.cat([gram_target * on, torch.ones_like(zero[..., 0])], -1)
        solved, info = torch.linalg.solve_ex(kkt, rhs)
        solution, lam = solved[..., :n], solved[..., n:]
        grad = _spkde_objective_grad(solution, gram, target)
        negative = support & (solution < 0)
        violated = valid & ~support & (grad - lam < -1e-9 * grad.abs().amax(-1, keepdim=True))
        ok = (info == 0) & solution.isfinite().all(-1) & ~(negative | violated).any(-1)
        if bool(ok.all()):
            break
        support = (support & ~negative) | violated
    return solution.clamp_min(0).to(dtype), ok


def _spkde_fista(
        gram: Tensor, target: Tensor, valid: Tensor, start: Tensor, steps: int, tol: float) -> Tensor:
    """FISTA with gradient restart on the simplex, stopped at gradient-mapping L1 ``<= tol``; no graph."""
    with torch.no_grad():
        lipschitz = gram.sum(-1).amax(-1, keepdim=True).clamp_min(finfo(gram.dtype)[1])
        outside = torch.full_like(start, -1e9)
        a = y = start
        t = torch.ones_like(lipschitz)
        for step in range(steps):
            descent = y - _spkde_objective_grad(y, gram, target) / lipschitz
            proposal = project_simplex(torch.where(valid, descent, outside))
            restart = ((y - proposal) * (proposal - a)).sum(-1, keepdim=True) > 0
            t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
            momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
            y = proposal + momentum * (proposal - a)
            a, t = proposal, torch.where(restart, torch.ones_like(t), t_next)
            if (step + 1) % 10 == 0:
                mapped = project_simplex(
                    torch.where(valid, a - _spkde_objective_grad(a, gram, target) / lipschitz, outside))
                if bool(((a - mapped).abs().sum(-1, keepdim=True) * lipschitz).amax() <= tol):
                    break
    return a


def spkde_weights(
        gram: Tensor,
        contamination: float,
        steps: int,
        valid: Tensor | None = None,
        tol: float = SPKDE_TOL,
        rounds: int = 10,
) -> Tensor:
    r"""Scaled-and-projected KDE weights: the solution of the simplex QP

    .. math::
        \min_{a \in \Delta} \tfrac12 a^\top G a - \tfrac{\beta}{N} \mathbf 1^\top G a,
        \qquad \beta = 1/(1-\varepsilon)

    Batched over the leading dimensions. (1) An exact primal active-set method (:func:`_spkde_active_set`,
    float64 KKT solves) started from the full support, at most ``rounds`` rounds; rows that pass the KKT
    check are done (in practice all rows, in 2-5 rounds at ViT shapes). (2) Only if a row is left: FISTA
    with gradient restart, step :math:`1/L`, :math:`L = \max_j \sum_l G_{jl} \ge \lambda_{\max}(G)`, from
    the KDE, stopped once every row's gradient mapping :math:`\lVert L(a - P_\Delta(a - \nabla/L))\rVert_1
    \le` ``tol`` (checked every 10 steps) or after ``steps``, then the active set again from its support;
    rows still unverified (a singular Gram, as for identical tokens, where every simplex point is optimal)
    keep the FISTA iterate. Gradients, where enabled, flow through the exact solve (the implicit derivative
    of the optimum on its support), not through FISTA.

    Args:
        gram: Kernel Gram matrix, ``[..., N, N]``.
        contamination: Assumed outlier fraction :math:`\varepsilon \in [0, 1)`.
        steps: Most projected-gradient steps of the fallback.
        valid: Keys taking part, ``[..., N]`` bool; others get weight 0.
        tol: Gradient-mapping tolerance of the fallback (``SPKDE_TOL``).
        rounds: Most active-set rounds per phase (0 skips the exact solve: FISTA only).

    Returns:
        Weights on the simplex over the valid keys, ``[..., N]``.
    """
    if gram.shape[-1] == 0:  # no keys: the empty simplex (the solvers' reductions need a key)
        return gram.new_zeros(gram.shape[:-1])
    if valid is None:
        valid = torch.ones(gram.shape[:-1], dtype=torch.bool, device=gram.device)
    gram = gram * (valid.unsqueeze(-1) & valid.unsqueeze(-2))
    uniform = _normalise(gram.new_ones(gram.shape[:-1]), valid)
    target = uniform / (1 - contamination)
    if rounds > 0:
        exact, ok = _spkde_active_set(gram, valid, target, valid, rounds)
        if bool(ok.all()):
            return exact
    else:
        exact, ok = uniform, torch.zeros_like(valid[..., 0])
    a = _spkde_fista(gram, target, valid, uniform, steps, tol)
    if rounds == 0:
        return a
    support = valid & (a > 1e-7 * a.amax(-1, keepdim=True))
    polished, polished_ok = _spkde_active_set(gram, support, target, valid, rounds)
    return torch.where(ok.unsqueeze(-1), exact, torch.where(polished_ok.unsqueeze(-1), polished, a))


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
    allowed = torch.ones_like(logits, dtype=torch.bool) if attn_mask is None else allowed_pairs(attn_mask)
    logits = logits.masked_fill(~allowed, float("-inf"))
    shift = logits.detach().amax(-1, keepdim=True).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    density = torch.exp(logits - shift)
    one_hot = F.one_hot(blocks, num_blocks).to(density.dtype)
    counts = allowed.to(density.dtype) @ one_hot
    means = (density.detach() @ one_hot) / counts
    median = means.float().nanmedian(-1).indices
    density = density * (blocks == median.unsqueeze(-1))
    return density / density.sum(-1, keepdim=True).clamp_min(finfo(density.dtype)[0])
