r"""The weighted geometric product of CGENN's steerable layer as an autograd function on blade-major
multivectors ``[2**n, C, M]``: a signed gather (each pair of left and output blades has exactly one right
blade), tiled over the batch axis so that its ``[2**n, 2**n, C, m]`` buffer stays in cache."""

from typing import NamedTuple

import torch
from torch import Tensor


class ProductTables(NamedTuple):
    r"""Per-channel signed weights of a weighted geometric product, blade-major ``[2**n, 2**n, C, 1]`` each:
    ``forward[i, j]`` :math:`= s\, \sigma_{ij} w_{c, t(i, j)}` (left blade ``i``, output blade ``j``),
    ``left[j, i] = forward[i, j]`` and ``right[i, k] = forward[i, i \oplus k]`` (the two rearrangements
    used by the backward pass)."""

    forward: Tensor
    left: Tensor
    right: Tensor


class WeightedProductIndex(NamedTuple):
    r"""Index tables of the weighted product, ``[4**n]`` each, over the pairs ``(i, j)`` (left blade ``i``,
    output blade ``j``) flattened: the grade triplet of ``(i, j, k = i xor j)``, the right blade ``k``, the
    flat position ``(i, i xor j)`` (the pair whose output blade is ``j`` read as a right blade) and
    :math:`\sigma_{ij}` (float64)."""

    triplet: Tensor
    right: Tensor
    right_position: Tensor
    sign: Tensor


def product_tables(
    weight: Tensor, index: WeightedProductIndex, num_blades: int, scale: float
) -> ProductTables:
    r"""The signed weights :math:`s\, \sigma_{ij} w_{c, t(i, j)}` in the three arrangements of
    :class:`ProductTables`. ``weight``: ``[C, T]``."""
    signed = weight[:, index.triplet] * (index.sign.to(weight.dtype) * scale)  # [C, (i, j)]
    forward = signed.t().reshape(num_blades, num_blades, weight.size(0), 1)
    return ProductTables(
        forward=forward,
        left=forward.transpose(0, 1).contiguous(),
        right=signed[:, index.right_position].t().reshape(forward.shape),
    )


def _weight_grad(pairs: Tensor, index: WeightedProductIndex, scale: float, weight: Tensor) -> Tensor:
    r"""The weight gradient :math:`\partial_{w_{c,t}} = s \sum_{(i,j) \in t} \sigma_{ij} P_{(i,j),c}`,
    ``[C, T]``, from the per-pair sums :math:`P_{(i,j),c} = \sum_m x_{c,i}\, g_{c,j}\, y_{c,i \oplus j}`
    ``[4**n, C]``."""
    pairs = pairs * (index.sign.to(pairs.dtype) * scale)[:, None]
    return pairs.new_zeros(weight.t().shape).index_add_(0, index.triplet, pairs).t()


_TILE = 2**18  # entries of the product buffer per CPU tile (1 MiB in float32, a cache)


def _signed_product(a: Tensor, b: Tensor, table: Tensor, right: Tensor) -> Tensor:
    r"""``out[j] = sum_i table[i, j] a[i] b[right[i, j]]`` for blade-major ``a, b`` ``[B, C, M]`` and
    ``table`` ``[B, B, C, 1]``, from differentiable operations: a gather of ``b`` into ``[B, B, C, M]``, two
    broadcast products and a sum over ``i``."""
    blades = a.size(0)
    pairs = b.index_select(0, right).view(blades, blades, *b.shape[1:])
    return (pairs * table * a.unsqueeze(1)).sum(0)


class _PairTiles:
    r"""Tiling of the batch axis of blade-major ``[B, C, M]`` operands for the eager weighted product: tiles
    of ``width`` columns whose ``[B, B, C, width]`` pair buffer holds at most ``_TILE`` entries, and that
    buffer, allocated once per call and reused by every tile (so it stays in cache), with the views each
    tile needs: ``flat`` ``[B * B, C, w]`` (gather target), ``pairs`` ``[B, B, C, w]`` and ``batched``
    ``[B * C, B, w]`` (``pairs`` with ``(i, c)`` as the batch of a matrix-vector product)."""

    def __init__(self, x: Tensor) -> None:
        blades, channels, m = x.shape
        tile = _TILE if x.device.type == "cpu" else blades * blades * channels * max(m, 1)  # one tile on GPUs
        self.width = min(max(m, 1), max(1, tile // (blades * blades * channels)))
        buffer = x.new_empty(blades * blades * channels * self.width)
        self.ones = x.new_ones(1, blades)
        self.views: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        for width in {self.width, m % self.width}:
            flat = buffer[: blades * blades * channels * width].view(blades * blades, channels, width)
            pairs = flat.view(blades, blades, channels, width)
            self.views[width] = (
                flat,
                pairs,
                pairs.permute(1, 2, 0, 3).reshape(blades * channels, blades, width),
            )

    def split(self, t: Tensor) -> tuple[Tensor, ...]:
        return t.split(self.width, dim=-1)

    def gather(self, b: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """``b[right]`` into the buffer: the views ``pairs`` and ``batched``."""
        flat, pairs, batched = self.views[b.size(-1)]
        torch.index_select(b, 0, right, out=flat)
        return pairs, batched

    def sum_left(self, pairs: Tensor) -> Tensor:
        """``pairs`` ``[B, B, C, w]`` summed over the first axis, as a ``[1, B] @ [B, B C w]`` product (faster
        than a reduction over the outer axis): ``[B, C, w]``."""
        return torch.mm(self.ones, pairs.view(pairs.size(0), -1)).view(pairs.shape[1:])

    def signed_product(self, a: Tensor, b: Tensor, table: Tensor, right: Tensor) -> Tensor:
        """:func:`_signed_product` of one tile; ``a`` is ``[B, 1, C, w]``."""
        return self.sum_left(self.gather(b, right)[0].mul_(table).mul_(a))


class WeightedGeometricProduct(torch.autograd.Function):
    r"""The weighted geometric product :math:`z_{c,j} = s \sum_i \sigma_{ij}\, w_{c, t(i,j)}\, x_{c,i}\,
    y_{c, i \oplus j}` of blade-major ``x, y`` ``[2**n, C, M]`` with weights ``[C, T]``
    (:func:`_signed_product`): per tile of the batch axis, ``y`` is gathered into a ``[2**n, 2**n, C, m]``
    buffer (at most ``_TILE`` entries, 1 MiB in float32, allocated once per call and reused across tiles, so
    it stays in cache),
    scaled in place by the signed weights and by ``x`` and summed over the left blade. Every pass is a
    contiguous vectorised loop; no ``[4**n, 2**n]`` dense table.

    Saves only ``x`` and ``y`` for backward (plus the weights and the small tables). The backward is three
    such passes per tile: :math:`\partial_y` is the same signed product of ``x`` and the output gradient
    ``g`` with the table ``right``; :math:`\partial_x` and the weight gradient share one buffer
    :math:`R_{ji} = g_j\, y_{j \oplus i}`: :math:`\partial_{x_i} = \sum_j \mathrm{left}_{ji} R_{ji}`,
    :math:`\partial_{w_t} = s \sum_{(i,j) \in t} \sigma_{ij} \sum_m x_i R_{ji}` (a batched
    matrix-vector product). Under ``create_graph=True`` the backward uses out-of-place operations and tables
    rebuilt from the weights, so second derivatives, e.g. of force losses, are exact
    (``gradgradcheck``-tested).
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        y: Tensor,
        weight: Tensor,
        tables: ProductTables,
        index: WeightedProductIndex,
        scale: float,
    ) -> Tensor:
        ctx.save_for_backward(x, y, weight)
        ctx.tables, ctx.index, ctx.scale = tables, index, scale
        tiles = _PairTiles(x)
        return torch.cat(
            [
                tiles.signed_product(a, b, tables.forward, index.right)
                for a, b in zip(tiles.split(x.unsqueeze(1)), tiles.split(y), strict=True)
            ],
            dim=-1,
        )

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight = ctx.saved_tensors
        tables, index = ctx.tables, ctx.index
        blades = x.size(0)
        needs_x, needs_y, needs_weight = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: differentiable tables and operations
            if weight.requires_grad:
                tables = product_tables(weight, index, blades, ctx.scale)
            grad_y = _signed_product(x, grad, tables.right, index.right) if needs_y else None
            shared = y.index_select(0, index.right).view(blades, blades, *y.shape[1:]) * grad.unsqueeze(1)
            grad_x = (shared * tables.left).sum(0) if needs_x else None
            pairs = (shared * x).sum(-1).transpose(0, 1) if needs_weight else None  # [i, j, C]
        else:
            grads_x, grads_y = [], []
            pairs = x.new_zeros(blades * x.size(1), blades, 1) if needs_weight else None  # [(i, c), j, 1]
            tiles = _PairTiles(x)
            for x_tile, x_column, y_tile, g_tile, g_row in zip(
                tiles.split(x.unsqueeze(1)),
                tiles.split(x.reshape(blades * x.size(1), 1, -1)),
                tiles.split(y),
                tiles.split(grad),
                tiles.split(grad.unsqueeze(1)),
                strict=True,
            ):
                if needs_y:
                    grads_y.append(tiles.signed_product(x_tile, g_tile, tables.right, index.right))
                if not (needs_x or needs_weight):
                    continue
                shared, batched = tiles.gather(y_tile, index.right)  # R_ji = g_j y_{j^i}
                shared.mul_(g_row)
                if pairs is not None:
                    pairs.baddbmm_(batched, x_column.transpose(1, 2))  # sum_m x_i R_ji
                if needs_x:
                    grads_x.append(tiles.sum_left(shared.mul_(tables.left)))
            grad_x = torch.cat(grads_x, dim=-1) if needs_x else None
            grad_y = torch.cat(grads_y, dim=-1) if needs_y else None
            if pairs is not None:
                pairs = pairs.view(blades, x.size(1), blades).transpose(1, 2)  # [i, j, C]
        grad_weight = None
        if pairs is not None:
            grad_weight = _weight_grad(pairs.reshape(blades * blades, -1), index, ctx.scale, weight)
        return grad_x, grad_y, grad_weight, None, None, None


class GatherWeightedProduct(torch.autograd.Function):
    r"""The weighted product of :class:`WeightedGeometricProduct` for ``torch.compile`` graphs, from
    out-of-place gathers that inductor fuses into one reduction loop each. Every backward term gathers only
    the output gradient ``g`` (a buffer that inductor has realised, since it also feeds the batched matmuls
    of the residual branch), never ``y`` (whose producer, the grade norm, inductor would otherwise recompute
    inside the gather for each of the ``4**n`` pairs and store as a ``[4**n, C, M]`` buffer):

    .. math::
        \partial_{y_j} = \sum_i \mathrm{right}_{ij}\, x_i\, g_{i \oplus j}, \quad
        \partial_{x_i} = \sum_k \mathrm{right}_{ik}\, y_k\, g_{i \oplus k}, \quad
        \partial_{w_t} = s \sum_{(i,j) \in t} \sigma_{ij} \sum_m x_i\, g_{i \oplus k}\, y_k,\ k = i \oplus j

    with the tables of :class:`ProductTables`. ``weight``: ``[C, T]``; the index tables as in
    :class:`WeightedProductIndex`. First derivatives only (AOT autograd compiles no double backward)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        y: Tensor,
        weight: Tensor,
        triplet: Tensor,
        right: Tensor,
        right_position: Tensor,
        sign: Tensor,
        scale: float,
    ) -> Tensor:
        ctx.save_for_backward(x, y, weight, triplet, right, right_position, sign)
        ctx.scale = scale
        index = WeightedProductIndex(triplet, right, right_position, sign)
        return _signed_product(x, y, product_tables(weight, index, x.size(0), scale).forward, right)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight, triplet, right, right_position, sign = ctx.saved_tensors
        blades = x.size(0)
        index = WeightedProductIndex(triplet, right, right_position, sign)
        table = product_tables(weight, index, blades, ctx.scale).right  # [i, k, C, 1]
        needs_x, needs_y, needs_weight = ctx.needs_input_grad[:3]
        grad_x = _signed_product(y, grad, table.transpose(0, 1), right) if needs_x else None
        grad_y = _signed_product(x, grad, table, right) if needs_y else None
        grad_weight = None
        if needs_weight:
            gathered = grad.index_select(0, right).view(blades, blades, *grad.shape[1:])  # [i, k] = g_{i^k}
            pairs = (gathered * x.unsqueeze(1) * y.unsqueeze(0)).sum(-1).reshape(blades * blades, -1)
            pairs = pairs.index_select(0, right_position)  # (i, k) -> (i, j = i xor k)
            grad_weight = _weight_grad(pairs, index, ctx.scale, weight)
        return grad_x, grad_y, grad_weight, None, None, None, None, None
