r"""Clifford-group equivariant layers on multivector features ``[..., channels, 2**n]`` (CGENN style).

Every layer mixes channels with one weight per grade, multiplies multivectors, or scales each grade by an
invariant, so it commutes with the Clifford-group action :meth:`CliffordAlgebra.versor_action`.

The public layout is ``[..., C, 2**n]``. Inside, every layer works on the blade-major layout
``[2**n, M, C]`` (:func:`to_blade_major`): a grade-wise linear map is then one batched matmul over blades,
and the per-grade invariants are one ``[n + 1, 2**n]`` matmul. :class:`CEMLP` converts once on the way in
and once on the way out; each layer's :meth:`forward` converts around its own
:meth:`~MVModule.forward_blade_major`.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .algebra import CliffordAlgebra


def to_blade_major(x: Tensor) -> Tensor:
    """``[..., C, 2**n]`` -> contiguous ``[2**n, M, C]`` with ``M`` the product of the leading dimensions."""
    return x.reshape(math.prod(x.shape[:-2]), x.size(-2), x.size(-1)).permute(2, 0, 1).contiguous()


def from_blade_major(x: Tensor, batch_shape: tuple[int, ...] | torch.Size) -> Tensor:
    """``[2**n, M, C]`` -> ``[*batch_shape, C, 2**n]`` (the inverse of :func:`to_blade_major`)."""
    return x.permute(1, 2, 0).reshape(*batch_shape, x.size(2), x.size(0))


class MVModule(nn.Module):
    """A multivector layer: :meth:`forward` takes the public layout ``[..., C, 2**n]``,
    :meth:`forward_blade_major` the internal one ``[2**n, M, C]``."""

    algebra: CliffordAlgebra
    in_channels: int

    def forward(self, x: Tensor) -> Tensor:
        self.algebra.check(x)
        if x.dim() < 2 or x.size(-2) != self.in_channels:
            raise ValueError(
                f"Expected input of shape [..., {self.in_channels}, {self.algebra.num_blades}], "
                f"got {tuple(x.shape)}"
            )
        return from_blade_major(self.forward_blade_major(to_blade_major(x)), x.shape[:-2])

    def forward_blade_major(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class MVLinear(MVModule):
    r"""Grade-wise linear map over channels, bias on the scalar blade only:

    .. math::
        y_{c, A} = \sum_m W_{c, m, |A|}\, x_{m, A} + \delta_{A, \emptyset}\, b_c

    computed as one batched matmul over blades, ``[2**n, M, C_in] @ [2**n, C_in, C_out]``.

    Args:
        in_channels (int): input multivector channels.
        out_channels (int): output multivector channels.
        algebra (CliffordAlgebra): the algebra.
        bias (bool): add a learnable scalar bias. (default: :obj:`True`)

    Shapes:
        - **input:** :math:`(*, C_{in}, 2^n)`
        - **output:** :math:`(*, C_{out}, 2^n)`
    """

    def __init__(
        self, in_channels: int, out_channels: int, algebra: CliffordAlgebra, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.algebra = in_channels, out_channels, algebra
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, algebra.num_grades))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_channels))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward_blade_major(self, x: Tensor, residual: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        r"""``residual + alpha (x W + b)``, blade-major: ``[2**n, M, C_in]`` -> ``[2**n, M, C_out]``."""
        weight = self.weight[..., self.algebra.blade_grades].permute(2, 1, 0)  # [2**n, C_in, C_out]
        if residual is None:
            if self.bias is None:
                return torch.bmm(x, weight) if alpha == 1.0 else torch.bmm(x, weight) * alpha
            bias = self.bias.new_zeros(self.algebra.num_blades, 1, self.out_channels)
            bias[0, 0] = self.bias * alpha
            return torch.baddbmm(bias, x, weight, alpha=alpha)
        out = torch.baddbmm(residual, x, weight, alpha=alpha)
        if self.bias is not None:
            out[0] += self.bias * alpha
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class GradeTables(NamedTuple):
    r"""Blade tables of an algebra in a working dtype: the grade of each blade ``[2**n]``, the signed grade
    sums :math:`P` ``[n + 1, 2**n]`` (:meth:`CliffordAlgebra.grade_sum_matrix`), the unsigned ones ``U`` and
    the blade squares :math:`\tilde e_A e_A` ``[2**n]``."""

    grades: Tensor
    signed: Tensor
    unsigned: Tensor
    squares: Tensor


def grade_tables(algebra: CliffordAlgebra, dtype: torch.dtype) -> GradeTables:
    signed = algebra.grade_sum_matrix(dtype)
    return GradeTables(algebra.blade_grades, signed, (signed != 0).to(dtype), algebra.blade_squares(dtype))


def _grade_sums(matrix: Tensor, x: Tensor) -> Tensor:
    """``matrix [G, B] @ x [B, M, C] -> [G, M, C]``."""
    return (matrix @ x.reshape(x.size(0), -1)).view(matrix.size(0), *x.shape[1:])


class _GradeGate(torch.autograd.Function):
    r"""MVSiLU on blade-major ``x``: :math:`y = x \odot E(\sigma(\alpha s + \beta))` with
    :math:`s_0 = x_0`, :math:`s_g = q(\langle x \rangle_g)`; saves only ``x`` and recomputes the gates."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, beta: Tensor, tables: GradeTables) -> Tensor:
        ctx.save_for_backward(x, alpha, beta)
        ctx.tables = tables
        invariants = _grade_sums(tables.signed, x * x)
        invariants[0] = x[0]
        return x * torch.sigmoid(alpha * invariants + beta)[tables.grades]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, alpha, beta = ctx.saved_tensors
        tables = ctx.tables
        invariants = _grade_sums(tables.signed, x * x)
        invariants[0] = x[0]
        gate = torch.sigmoid(alpha * invariants + beta)
        dot = _grade_sums(tables.unsigned, grad * x)  # dL/dgate, [G, M, C]
        dgate = dot * gate * (1 - gate)  # dL/d(alpha s + beta)
        ds = dgate * alpha
        grad_x = grad * gate[tables.grades] + ds[tables.grades] * (2 * tables.squares[:, None, None]) * x
        grad_x[0] = grad[0] * gate[0] + ds[0]  # s_0 = x_0 (linear, not a quadratic form)
        grad_alpha = (dgate * invariants).sum(1, keepdim=True)
        grad_beta = dgate.sum(1, keepdim=True)
        return grad_x, grad_alpha, grad_beta, None


class _GradeNormalise(torch.autograd.Function):
    r"""MVGradeNorm on blade-major ``x``: :math:`y = x / E(\sigma(a)(n - 1) + 1)`,
    :math:`n_g = \sqrt{|q(\langle x \rangle_g)| + \epsilon}`; saves only ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, tables: GradeTables, eps: float) -> Tensor:
        ctx.save_for_backward(x, a)
        ctx.tables, ctx.eps = tables, eps
        norms = (_grade_sums(tables.signed, x * x).abs() + eps).sqrt()
        return x / (torch.sigmoid(a) * (norms - 1) + 1)[tables.grades]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, a = ctx.saved_tensors
        tables = ctx.tables
        forms = _grade_sums(tables.signed, x * x)
        norms = (forms.abs() + ctx.eps).sqrt()
        weight = torch.sigmoid(a)
        denominator = weight * (norms - 1) + 1
        ddenominator = -_grade_sums(tables.unsigned, grad * x) / denominator**2  # dL/d(denominator)
        dforms = ddenominator * weight * torch.sign(forms) / (2 * norms)
        grad_x = (
            grad / denominator[tables.grades]
            + dforms[tables.grades] * (2 * tables.squares[:, None, None]) * x
        )
        grad_a = (ddenominator * (norms - 1)).sum(1, keepdim=True) * weight * (1 - weight)
        return grad_x, grad_a, None, None


class _LayerNormalise(torch.autograd.Function):
    r"""MVLayerNorm on blade-major ``x``: :math:`y = x\, \gamma / (\bar n + \epsilon)`,
    :math:`\bar n_m = \frac1C \sum_c \sqrt{|q(x_{m,c})| + 10^{-12}}`; saves only ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, squares: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, scale)
        ctx.squares, ctx.eps = squares, eps
        forms = (squares @ (x * x).reshape(x.size(0), -1)).view(x.shape[1:])  # [M, C]
        mean = (forms.abs() + 1e-12).sqrt().mean(-1, keepdim=True)  # [M, 1]
        return x * (scale / (mean + eps))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, scale = ctx.saved_tensors
        squares = ctx.squares
        forms = (squares @ (x * x).reshape(x.size(0), -1)).view(x.shape[1:])
        norms = (forms.abs() + 1e-12).sqrt()
        inverse = 1 / (norms.mean(-1, keepdim=True) + ctx.eps)  # [M, 1]
        dot = (grad * x).sum(0)  # dL/d(factor), [M, C]
        dmean = -(dot * scale).sum(-1, keepdim=True) * inverse**2  # [M, 1]
        dforms = dmean / x.size(2) * torch.sign(forms) / (2 * norms)  # [M, C]
        grad_x = grad * (scale * inverse) + (2 * squares[:, None, None]) * x * dforms
        grad_scale = (dot * inverse).sum(0)
        return grad_x, grad_scale, None, None


class MVSiLU(MVModule):
    r"""Grade-gated SiLU: each grade is scaled by a sigmoid of an invariant of that grade,

    .. math::
        \langle x_c \rangle_g \leftarrow \sigma(\alpha_{c,g}\, s_{c,g} + \beta_{c,g}) \langle x_c \rangle_g,
        \quad s_{c,0} = \langle x_c \rangle_0,\; s_{c,g} = q(\langle x_c \rangle_g)\ (g \ge 1).

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.channels = self.in_channels = channels
        self.algebra = algebra
        self.alpha = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.beta = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.alpha)
        nn.init.zeros_(self.beta)

    def forward_blade_major(self, x: Tensor) -> Tensor:
        tables = grade_tables(self.algebra, x.dtype)
        return _GradeGate.apply(x, self.alpha.t()[:, None], self.beta.t()[:, None], tables)


class MVGradeNorm(MVModule):
    r"""Soft per-grade normalisation :math:`x_g / (\sigma(a_{c,g}) (\|x_g\| - 1) + 1)`, :math:`a` init 0,
    with :math:`\|x_g\| = \sqrt{|q(x_g)| + \epsilon}`.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.in_channels, self.algebra = channels, algebra
        self.a = nn.Parameter(torch.empty(channels, algebra.num_grades))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.a)

    def forward_blade_major(self, x: Tensor, eps: float = 1e-12) -> Tensor:
        return _GradeNormalise.apply(x, self.a.t()[:, None], grade_tables(self.algebra, x.dtype), eps)


class ProductTables(NamedTuple):
    """Per-channel bilinear tables of a weighted geometric product, ``[C, 4**n, 2**n]`` each:
    ``forward[c, (i, k), j]``, ``left[c, (j, k), i]`` and ``right[c, (i, j), k]`` (the last two are the
    transposes used by the backward pass)."""

    forward: Tensor
    left: Tensor
    right: Tensor


class WeightedProductIndex(NamedTuple):
    r"""Index tables of the weighted product for left blade ``i`` and output blade ``j`` (``[2**n, 2**n]``
    flattened): the grade triplet of ``(i, j, k = i xor j)``, the flat positions ``(i, k, j)`` and
    ``(i, j, k)`` in a ``[2**n, 2**n, 2**n]`` table, and :math:`\sigma_{ij}` (float64)."""

    triplet: Tensor
    position: Tensor
    transposed_position: Tensor
    sign: Tensor


def product_tables(
    weight: Tensor, index: WeightedProductIndex, num_blades: int, scale: float
) -> ProductTables:
    r"""Scatter the signed weights :math:`s\, \sigma_{ij} w_{c, t(i, j)}` into the three dense tables of
    :class:`ProductTables` (:math:`2^n` non-zeros per ``(c, i)`` row block). ``weight``: ``[C, T]``."""
    channels = weight.size(0)
    values = weight[:, index.triplet] * (index.sign.to(weight.dtype) * scale)
    table = weight.new_zeros(channels, num_blades**3)
    table[:, index.position] = values
    cube = table.view(channels, num_blades, num_blades, num_blades)  # [c, i, k, j]
    square = num_blades * num_blades
    return ProductTables(
        forward=table.view(channels, square, num_blades),
        left=cube.permute(0, 3, 2, 1).reshape(channels, square, num_blades),
        right=cube.permute(0, 1, 3, 2).reshape(channels, square, num_blades),
    )


def _channel_major(x: Tensor) -> Tensor:
    """Blade-major ``[2**n, M, C]`` <-> channel-major ``[C, M, 2**n]`` (a contiguous copy)."""
    return x.permute(2, 1, 0).contiguous()


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """``[C, M, 2**n] x [C, M, 2**n] -> [C, M, 4**n]``: the outer products of each channel's blades."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(2)


class WeightedGeometricProduct(torch.autograd.Function):
    r"""The weighted geometric product :math:`z_{c,j} = s \sum_i \sigma_{ij}\, w_{c, t(i,j)}\, x_{c,i}\,
    y_{c, i \oplus j}` of blade-major ``x, y`` ``[2**n, M, C]`` with weights ``[C, T]``:
    ``z_c = (x_c \otimes y_c) B_c`` with the per-channel table ``B_c`` ``[4**n, 2**n]``, one batched matmul.

    Saves only ``x`` and ``y`` for backward (plus the weights and the small tables); the gradients with
    respect to ``x`` and ``y`` are two more weighted products with the transposed tables, the weight
    gradient is one batched matmul of the outer products with the output gradient, summed over the pairs of
    each grade triplet. The
    ``[C, M, 4**n]`` outer products exist only transiently, one at a time. The backward is built from
    differentiable operations (with the tables rebuilt from the weights under ``create_graph=True``), so
    second derivatives, e.g. of force losses, are exact (``gradgradcheck``-tested).
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
        z = torch.bmm(_outer(_channel_major(x), _channel_major(y)), tables.forward)  # [C, M, 2**n]
        return _channel_major(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, weight = ctx.saved_tensors
        tables, index = ctx.tables, ctx.index
        if torch.is_grad_enabled() and weight.requires_grad:  # create_graph: differentiable tables
            tables = product_tables(weight, index, x.size(0), ctx.scale)
        x_cm, y_cm, grad_cm = _channel_major(x), _channel_major(y), _channel_major(grad)
        grad_x = grad_y = grad_weight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            grad_outer = _outer(grad_cm, y_cm)  # [C, M, (j, k)], shared by the x and weight gradients
            if ctx.needs_input_grad[0]:
                grad_x = _channel_major(torch.bmm(grad_outer, tables.left))
            if ctx.needs_input_grad[2]:
                grad_table = torch.bmm(x_cm.transpose(1, 2), grad_outer)  # [C, i, (j, k)]
                pairs = grad_table.flatten(1)[:, index.transposed_position] * (
                    index.sign.to(grad.dtype) * ctx.scale
                )
                grad_weight = pairs.new_zeros(weight.shape)
                grad_weight = grad_weight.index_add_(1, index.triplet, pairs)
        if ctx.needs_input_grad[1]:
            grad_y = _channel_major(torch.bmm(_outer(x_cm, grad_cm), tables.right))
        return grad_x, grad_y, grad_weight, None, None, None


class SteerableGeometricProduct(MVModule):
    r"""Weighted geometric product of a channel with a linear mix of the channels:

    .. math::
        y = \mathrm{GradeNorm}(\mathrm{Linear}_R(x)), \quad
        z_{c,j} = \sum_i \sigma_{ij}\, w_{c, |i|, |j|, |k|}\; x_{c,i}\, y_{c,k},\ k = i \oplus j, \qquad
        \mathrm{out} = (\mathrm{Linear}_L(x) + z) / \sqrt 2

    with one weight per channel and grade triplet (e.g. 20 non-zero triplets for :math:`Cl(3,0)`).
    The product is :class:`WeightedGeometricProduct` (an autograd function that saves only its operands).
    Its per-channel tables ``[C, 4**n, 2**n]`` are built once per parameter update and cached (keyed on the
    weight's version counter), not once per call.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    triplet_index: Tensor
    table_position: Tensor
    transposed_position: Tensor

    def __init__(self, channels: int, algebra: CliffordAlgebra) -> None:
        super().__init__()
        self.channels = self.in_channels = channels
        self.algebra = algebra
        g = algebra.blade_grades
        triplets = (g[:, None] * algebra.num_grades + g[None, :]) * algebra.num_grades + g[
            algebra.right_index
        ]
        unique, index = torch.unique(triplets, return_inverse=True)
        self.register_buffer("triplet_index", index.flatten(), persistent=False)
        num, blades = algebra.num_blades, torch.arange(algebra.num_blades)
        position = (blades[:, None] * num + algebra.right_index) * num + blades
        self.register_buffer("table_position", position.flatten(), persistent=False)  # (i, k, j) per (i, j)
        transposed = (blades[:, None] * num + blades) * num + algebra.right_index
        self.register_buffer("transposed_position", transposed.flatten(), persistent=False)  # (i, j, k)
        self.num_triplets = unique.numel()
        self.linear_right = MVLinear(channels, channels, algebra, bias=False)
        self.linear_left = MVLinear(channels, channels, algebra)
        self.normalize = MVGradeNorm(channels, algebra)
        self.weight = nn.Parameter(torch.empty(channels, self.num_triplets))
        self._tables: tuple[tuple, ProductTables] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear_right.reset_parameters()
        self.linear_left.reset_parameters()
        self.normalize.reset_parameters()
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.algebra.dim + 1))

    def product_index(self) -> WeightedProductIndex:
        return WeightedProductIndex(
            self.triplet_index, self.table_position, self.transposed_position, self.algebra.sign.flatten()
        )

    def product_tables(self) -> ProductTables:
        """The tables of the current weights: cached until the weight changes (eager), rebuilt inside a
        ``torch.compile`` graph (where they cost one fused gather)."""
        scale = 1.0 / math.sqrt(2.0)
        weight = self.weight.detach()
        if torch.compiler.is_compiling():
            return product_tables(weight, self.product_index(), self.algebra.num_blades, scale)
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, product_tables(weight, self.product_index(), self.algebra.num_blades, scale))
        return self._tables[1]

    def forward_blade_major(self, x: Tensor) -> Tensor:
        y = self.normalize.forward_blade_major(self.linear_right.forward_blade_major(x))
        scale = 1.0 / math.sqrt(2.0)
        if torch.compiler.is_compiling():
            z = self.gather_product(x, y, scale)
        else:
            z = WeightedGeometricProduct.apply(
                x, y, self.weight, self.product_tables(), self.product_index(), scale
            )
        return self.linear_left.forward_blade_major(x, residual=z, alpha=scale)

    def gather_product(self, x: Tensor, y: Tensor, scale: float) -> Tensor:
        r"""The same weighted product as a broadcast, gather and sum over the left blade,
        :math:`z_j = s \sum_i (\sigma_{ij} w_{t(i,j)}) \odot x_i \odot y_{i \oplus j}`: used inside
        ``torch.compile`` graphs, where inductor fuses it (and its backward) into loops with no
        ``[2**n, 2**n, M, C]`` buffer; in eager mode it would materialise that buffer, so eager uses
        :class:`WeightedGeometricProduct`."""
        blades = self.algebra.num_blades
        index = self.product_index()
        signed = self.weight[:, index.triplet] * (index.sign.to(x.dtype) * scale)  # [C, (i, j)]
        signed = signed.t().reshape(blades, blades, 1, self.channels)
        return (x[:, None] * signed * y[self.algebra.right_index]).sum(0)


class MVLayerNorm(MVModule):
    r"""Multivector layer norm: :math:`x_c \leftarrow \gamma_c\, x_c / (\frac1C \sum_m \|x_m\| + \epsilon)`,
    with :math:`\|x\| = \sqrt{|q(x)| + 10^{-12}}`.

    Shapes:
        - **input / output:** :math:`(*, C, 2^n)`
    """

    def __init__(self, channels: int, algebra: CliffordAlgebra, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_channels, self.algebra, self.eps = channels, algebra, eps
        self.scale = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.scale)

    def forward_blade_major(self, x: Tensor) -> Tensor:
        return _LayerNormalise.apply(x, self.scale, self.algebra.blade_squares(x.dtype), self.eps)


class CEMLP(MVModule):
    r"""Clifford-equivariant MLP: ``num_layers`` blocks of
    [:class:`MVLinear` -> :class:`MVSiLU` -> :class:`SteerableGeometricProduct` -> :class:`MVLayerNorm`]
    followed by an output :class:`MVLinear`, all in the blade-major layout between one conversion in and one
    out.

    Shapes:
        - **input:** :math:`(*, C_{in}, 2^n)`
        - **output:** :math:`(*, C_{out}, 2^n)`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        algebra: CliffordAlgebra,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1, got {num_layers}")
        self.in_channels, self.algebra = in_channels, algebra
        blocks: list[MVModule] = []
        for layer in range(num_layers):
            width = in_channels if layer == 0 else hidden_channels
            blocks += [
                MVLinear(width, hidden_channels, algebra),
                MVSiLU(hidden_channels, algebra),
                SteerableGeometricProduct(hidden_channels, algebra),
                MVLayerNorm(hidden_channels, algebra),
            ]
        blocks.append(MVLinear(hidden_channels, out_channels, algebra))
        self.net = nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        for module in self.net:
            module.reset_parameters()

    def forward_blade_major(self, x: Tensor) -> Tensor:
        for module in self.net:
            x = module.forward_blade_major(x)
        return x
